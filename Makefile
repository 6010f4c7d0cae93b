# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-big lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[s3,testing,test,client]'
	touch $(STAMP)

run: install
	$(BIN)/gateway serve

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix gateway tests bench
	$(BIN)/ruff format gateway tests bench

# tus-js-client, which the tests run under Node
JS_DEPS := tests/js/node_modules/.installed
$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --silent
	touch $@

test: install lint $(JS_DEPS)
	$(BIN)/pytest $(PYTEST_ARGS)

test-big: install
	$(BIN)/pytest -m big $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
