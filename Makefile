# The two commands: `make run` starts everything; `make test` installs and runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH ?=

.PHONY: run test bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m deploy.embedded

# Whole suite on PostgreSQL (when 127.0.0.1:5432 answers), then the integration tests again on SQLite,
# so both dialects pass on every run.
test: install
	$(PY) -m pytest -q
	VMC_TEST_DATABASE_URL=sqlite $(PY) -m pytest -q tests/integration

bench: install
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) var
