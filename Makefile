# Every target sets itself up on a fresh machine: it creates .venv when missing and installs the
# pinned dependencies (constraints.txt) it needs. Nothing here needs an API key.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed-dev
EXTRAS := dev,proxy,redis,resp,kv,semantic,postgres,prefix,langchain
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: help venv test lint typecheck unit serve bench fmt clean system-deps browser-deps

help:
	@echo "make serve   run the caching proxy on $(HOST):$(PORT) (embedded store, no Redis, no key)"
	@echo "make test    lint + mypy --strict + the whole test suite"
	@echo "make bench   run the benchmarks in bench/ (needs ../shared/traces)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

# Servers the integration tests start for themselves (on free loopback ports, stopped by pid):
# Debian's redis-server. Installed only when missing; needs root, as on CI and the dev machines.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package) for the integration tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; \
	}

# Debian's chromium for the dashboard's browser test (tests/proxy/test_dashboard.py skips without it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (Debian package) for the dashboard's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	}

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps browser-deps
	$(BIN)/python -m pytest -q

test: lint typecheck unit

serve: $(STAMP)
	$(BIN)/strata serve --host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(BIN)/python bench/hit_ratio.py
	$(BIN)/python bench/engine_speed.py
	$(BIN)/python bench/engine_memory.py

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
