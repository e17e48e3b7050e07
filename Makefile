# The verbs a newcomer needs: `make run`, `make test`; `make all` adds lint and types.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types all bench bench-life bench-storage bench-faust bench-h2 schemas clean

$(STAMP): pyproject.toml devtools/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "dispatcher needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./devtools -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/dispatcher dev

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check dispatcher devtools tests bench

types: $(STAMP)
	$(BIN)/mypy dispatcher devtools/dispatcher_dev bench tests

all: lint types test

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ./devtools -e '.[dev,bench]'
	$(BIN)/python -m bench

# the storage row alone: BENCH_GROWTH commands through their whole life (docs/storage.md)
bench-life: $(STAMP)
	$(BIN)/python -m bench.lifecycle

# the measurement behind the retention design (docs/storage.md)
bench-storage: $(STAMP)
	$(BIN)/python -m bench.storage

# the measurement behind "aiokafka, not faust-streaming" (README)
bench-faust: $(STAMP)
	$(BIN)/pip install --quiet 'faust-streaming==0.15.*'
	$(BIN)/python -m bench.faust_compare

# HTTP/2 (httpx with h2) against aiohttp's HTTP/1.1 for FCM: client CPU per request
bench-h2: $(STAMP)
	$(BIN)/pip install --quiet -e ./devtools -e '.[dev,bench]' 'httpx[http2]>=0.27' 'hypercorn>=0.17'
	$(BIN)/python -m bench.h2_compare

schemas: $(STAMP)
	$(BIN)/dispatcher schemas --write

clean:
	rm -rf $(VENV) .dev
