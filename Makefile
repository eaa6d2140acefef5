# Two commands matter: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
EXTRAS ?= text,dev
# uv installs from its cache (~/.cache/uv) when it is warm: seconds, not minutes. Run as a
# module it would install into the interpreter running it, hence --python.
UV := $(PYTHON) -m uv

.PHONY: install demo test test-unit services services-down lint bench clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	$(UV) venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip install -q --python $(VENV)/bin/python -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/scoring demo $(DEMO_ARGS)

services:
	@deploy/services.sh up

services-down:
	@deploy/services.sh down

# Starts Redis, PostgreSQL and Kafka when they are not already up, then runs every test.
test: install services
	eval "$$(deploy/services.sh env | sed 's/export SCORING_/export SCORING_TEST_/')" && \
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check scoring schemas producers workers bench tests
	$(VENV)/bin/ruff format --check scoring schemas producers workers bench tests

clean:
	rm -rf $(VENV) .pytest_cache scoring.db scoring.db-* model-store
