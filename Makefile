# The two commands: `make run` starts everything; `make test` installs and runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH ?=

.PHONY: run test bench install browser asyncapi-parser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The docs test renders /api/v1/docs in a real headless Chromium (Debian's package), and a bench test
# drives wrk (Debian's package, the benchmarks' load generator). Installed only for the tests, only when
# missing, and only where apt-get can (root): `make run` never needs them.
browser:
	@if { [ ! -x /usr/bin/chromium ] || ! command -v wrk >/dev/null; } && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium wrk >/dev/null; fi

# The AsyncAPI test validates /api/v1/asyncapi.json with the official parser (@asyncapi/parser, npm,
# pinned in tests/asyncapi/package-lock.json). Installed only for the tests, only where node and npm
# exist, again when the lock file changes. --ignore-scripts: nothing in that tree needs an install
# script, and one dependency's would send usage telemetry.
ASYNCAPI := tests/asyncapi
asyncapi-parser:
	@if command -v node >/dev/null && command -v npm >/dev/null && \
		[ ! $(ASYNCAPI)/node_modules/.package-lock.json -nt $(ASYNCAPI)/package-lock.json ]; then \
		npm ci --prefix $(ASYNCAPI) --no-audit --no-fund --ignore-scripts --loglevel=error; fi

run: install
	$(PY) -m deploy.embedded

# Whole suite on PostgreSQL (when 127.0.0.1:5432 answers), then the integration tests again on SQLite,
# so both dialects pass on every run. Tests marked dialect_free answer the same on any database (see
# README, Tests): the SQLite pass leaves them out.
test: install browser asyncapi-parser
	$(PY) -m pytest -q
	VMC_TEST_DATABASE_URL=sqlite $(PY) -m pytest -q -m "not dialect_free" tests/integration

# wrk (Debian's package) is the load generator the benchmarks prefer: far lighter on the shared cores
# than the Python fallback; nginx (nginx-light) is the yardstick proxy bench gateway_overhead measures
# beside the gateway; valgrind counts instructions per request for bench gateway_instructions.
# Installed only when missing and only where apt-get can (root).
bench: install
	@if { ! command -v wrk >/dev/null || ! [ -x /usr/sbin/nginx ] || ! command -v valgrind >/dev/null; } && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light valgrind >/dev/null; fi
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) var
