# The two commands a newcomer needs: `make dev` starts everything, `make test` runs the tests.
# Both create the virtualenv and install the pinned packages on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install clean

dev: $(STAMP)
	$(BIN)/ferry dev

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) var
