# The two set-up commands: `make demo` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Every direct and transitive dependency, pinned (`make lock` refreshes it). Used as pip
# constraints, so each target installs only what its extra needs, at exactly the tested version.
LOCK := constraints.txt
PIP_INSTALL = $(PY) -m pip install -q --disable-pip-version-check -c $(LOCK)
PIP_TOOLS := pip-tools==7.6.2

.PHONY: test lint demo bench bench-frontier bench-week bench-seeds bench-learning bench-reaction bench-scale lock clean

# One stamp per extra: the demo does not wait for the test tools (Helm, schemas) to install.
# setuptools comes from the lock too (no build isolation), so the build is as pinned as the rest.
EXTRAS_demo := demo
EXTRAS_test := demo,k8s,test
# The consumer runtime (consumer/, its own distribution) comes along: the demo runs it beside each worker.
$(VENV)/.installed-%: pyproject.toml consumer/pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) setuptools
	$(PIP_INSTALL) --no-build-isolation -e '.[$(EXTRAS_$*)]' -e './consumer[all]'
	touch $@

# Tests start what they need (Redis, NATS, moto, the emulator) from tests/conftest.py.
# Most of the suite's time is waiting (cold starts, leases, real processes), not CPU: more workers
# than cores finish it sooner. Every test isolates itself (own keys, ports, emulator), so any split works.
TEST_WORKERS ?= 6
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

demo: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler demo $(DEMO_ARGS)

bench: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler simulate --all

# Our fixed settings and wait targets swept on every trace, against KEDA and the oracle (< 5 min).
bench-frontier: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler simulate --frontier

# Every policy on a week of traffic (about 330,000 jobs), each under 60 s and 1 GB (a few minutes).
bench-week: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler simulate --week

# The wait targets and the fixed settings tuned on the built-in traces, on 20 other draws (< 1 min).
bench-seeds: $(VENV)/.installed-demo
	$(PY) bench/seeds.py

# multi-day's wait rows beside ours told the true arrival rate, against the oracle's bound (< 1 min).
bench-learning: $(VENV)/.installed-demo
	$(PY) bench/learning.py

# Real time, real processes: seconds from a queued unit to the session request (about 3 minutes).
bench-reaction: $(VENV)/.installed-demo
	$(PY) bench/reaction.py

# The controller at 1,000, 5,000 and 10,000 sessions, and starved of CPU (about 11 minutes).
bench-scale: $(VENV)/.installed-demo
	$(PY) bench/scale.py

# Re-resolve every dependency to the newest release pyproject.toml allows; run `make test` after.
# `make lock LOCK_UPGRADE=` only adds what pyproject.toml newly asks for and keeps every other pin.
LOCK_UPGRADE ?= --upgrade
lock:
	test -x .venv-lock/bin/python || $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --disable-pip-version-check $(PIP_TOOLS)
	.venv-lock/bin/pip-compile -q $(LOCK_UPGRADE) --all-extras --all-build-deps --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml consumer/pyproject.toml

clean:
	rm -rf $(VENV) .venv-lock state demo-out .pytest_cache
