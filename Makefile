# One entry point for people and CI. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps demo test lint format unit fuzz bench bench-quick chaos chaos-quick schema clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -e . --no-deps
	touch $(STAMP)

node_modules/.bin/azurite: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(STAMP) node_modules/.bin/azurite

demo: deps
	$(PY) -m tools.demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: deps lint
	$(PY) -m pytest

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

unit: $(STAMP)
	$(PY) -m pytest tests/unit

# The long fuzz runs (docs/security.md): 10,000 queue bodies through the worker, 200 examples per
# API operation in every schemathesis phase. `make test` runs the same tests with short counts.
fuzz: deps
	FUZZ_QUEUE_EXAMPLES=10000 FUZZ_API_EXAMPLES=200 $(PY) -m pytest -s --timeout=7200 \
		tests/integration/test_queue_fuzz.py tests/e2e/test_api_fuzz.py

bench: deps
	$(PY) -m tools.bench all

# BENCH picks benchmarks (default all); CI runs the ones that finish in seconds (docs/development.md).
BENCH ?= all
bench-quick: deps
	$(PY) -m tools.bench $(BENCH) --quick

# The chaos suite (docs/development.md#chaos-suite): 1,000 requests per seed, two seeds.
CHAOS_SEEDS ?= 1 2
chaos: deps
	$(PY) -m tools.chaos --requests 1000 $(foreach seed,$(CHAOS_SEEDS),--seed $(seed))

chaos-quick: deps
	$(PY) -m tools.chaos --quick

schema: $(STAMP)
	$(PY) -m tools.schema

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache
