# tagalong: every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BUF := tools/node_modules/.bin/buf
GEN_DIR := tagalong/v1
PROTOS := $(wildcard protos/tagalong/v1/*.proto)
# Extras installed by `make setup`: CPU inference, model export (torch), the Milvus server, dev tools.
EXTRAS ?= cpu,export,server,dev
PYTEST_ARGS ?=

.PHONY: help setup protos check-protos lint test test-unit test-integration test-e2e test-slow up down status demo bench eval models clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tagalong needs Python >= 3.11 (set PYTHON=python3.11)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

$(BUF): tools/package.json
	cd tools && npm install --no-audit --no-fund --silent
	touch $@

setup: $(STAMP) $(GEN_DIR)/__init__.py $(BUF) ## create .venv, install pinned dependencies, generate code

$(GEN_DIR)/__init__.py: $(PROTOS) $(STAMP) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py

protos: $(STAMP) ## regenerate tagalong/v1 from protos/ (generated code is never committed)
	$(PY) scripts/gen_protos.py

check-protos: setup ## fail when tagalong/v1 differs from a fresh generation
	$(PY) scripts/gen_protos.py --check

lint: setup $(BUF) ## ruff + mypy + buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	cd protos && ../$(BUF) lint

test: setup ## unit + integration tests (the README's test command; CI runs it)
	$(PY) scripts/gen_protos.py --check
	$(PY) -m pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

test-unit: setup ## unit tests only (no Redis, no Milvus server)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup ## integration tests against real Redis and real Milvus (Lite and server)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup ## end-to-end tests through the gateway
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-slow: setup ## the slow suites (marked slow), not part of `make test`
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

up: setup ## start Redis, the Milvus server and the four services as local processes
	$(PY) -m tagalong.devstack up

down: ## stop everything `make up` started (Milvus child process included)
	@if [ -x $(PY) ]; then $(PY) -m tagalong.devstack down; else echo "nothing to stop (no .venv)"; fi

status: setup ## show what `make up` is running
	$(PY) -m tagalong.devstack status

models: setup ## export the offline EfficientNet-Lite0 and the small random CLIP into var/models
	$(PY) -m tagalong.devstack models

demo: setup ## the main job: ingest real photos, label them from a few human labels, search, dedup, project
	$(PY) -m tagalong.demo $(if $(DATA),--data $(DATA),)

bench: setup ## benchmarks; results in bench/results/*.md
	$(PY) -m bench.run_all

eval: setup ## evaluation harness of the clusterer (accuracy vs baselines)
	$(PY) -m bench.eval_labeling

clean: down ## remove the virtualenv, generated code, caches and local data
	rm -rf $(VENV) $(GEN_DIR) tools/node_modules var .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
