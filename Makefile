# The two set-up commands: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Tests start what they need (Redis, NATS, moto, the emulator) from tests/conftest.py.
test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/vast-queue-scaler demo $(DEMO_ARGS)

bench: venv
	$(VENV)/bin/vast-queue-scaler simulate --all

clean:
	rm -rf $(VENV) state demo-out .pytest_cache
