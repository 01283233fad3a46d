# The two commands a newcomer needs: `make dev` starts everything, `make test` runs the tests.
# Both create the virtualenv and install the pinned packages on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The dashboard's browser test drives Debian's Chromium; Playwright never downloads a browser.
CHROMIUM := /usr/bin/chromium

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: dev test install clean bench bench-env

dev: $(STAMP)
	$(BIN)/ferry dev

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Benchmarks run in their own virtualenv, so that bench-only packages (LitServe) never
# reach the product's; the load generator is wrk (the Debian package, installed when missing).
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.report

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): requirements.txt bench/requirements.txt pyproject.toml
	command -v wrk >/dev/null || (apt-get install -y wrk || sudo apt-get install -y wrk)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -r requirements.txt -r bench/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(BENCH_STAMP)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "The browser test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; \
	fi

clean:
	rm -rf $(VENV) $(BENCH_VENV) var
