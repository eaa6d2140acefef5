# Two commands matter: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
EXTRAS ?= text,dev
# uv installs from its cache (~/.cache/uv) when it is warm: seconds, not minutes. Run as a
# module it would install into the interpreter running it, hence --python. Bytecode is
# compiled once here: with PYTHONDONTWRITEBYTECODE set, every process would otherwise
# compile torch, SQLAlchemy and Celery again on import.
UV := $(PYTHON) -m uv

.PHONY: install packages demo test test-unit services services-env services-down lint bench clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	$(UV) venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip install -q --compile-bytecode --python $(VENV)/bin/python -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

# Debian packages and Kafka's jars for the local services (idempotent, quick when done).
packages:
	@deploy/install-packages.sh

demo: install
	$(VENV)/bin/scoring demo $(DEMO_ARGS)

# Redis, PostgreSQL and Kafka on loopback, started when they are not answering.
services: install packages
	@$(PY) -m deploy.services up >/dev/null

# `eval "$(make -s services-env)"` points a shell's SCORING_* settings at them.
services-env:
	@$(PY) -m deploy.services env

services-down:
	@$(PY) -m deploy.services down

# The test session starts the services it needs (tests/conftest.py), then runs every test.
test: install packages
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install packages
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check scoring schemas producers workers bench deploy tests
	$(VENV)/bin/ruff format --check scoring schemas producers workers bench deploy tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/bandit -q -c pyproject.toml -r scoring schemas producers workers bench

clean:
	rm -rf $(VENV) .pytest_cache scoring.db scoring.db-* model-store
