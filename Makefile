VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Two stamps: `make run` needs only the runtime; lint and tests also need the dev toolchain
# (playwright, schemathesis, hadolint, ...).
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: deps dev-deps test-deps run test lint format containers

deps: $(RUNTIME)
	@scripts/install-redis
	@scripts/install-nginx

dev-deps: deps $(DEV)

# Only the dashboard's browser test needs Chromium; `make run` does not.
test-deps: dev-deps
	@scripts/install-chromium

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet -e .
	touch $@

$(DEV): pyproject.toml $(RUNTIME)
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $@

run: deps
	$(PYTHON) -m scripts.run_local

lint: dev-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: dev-deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

containers: dev-deps
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

test: test-deps lint containers
	$(PYTHON) -m pytest $(PYTEST_ARGS)
