VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps test-deps run test lint format containers

deps: $(STAMP)
	@scripts/install-redis
	@scripts/install-nginx

# Only the dashboard's browser test needs Chromium; `make run` does not.
test-deps: deps
	@scripts/install-chromium

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: deps
	$(PYTHON) -m scripts.run_local

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

containers: deps
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

test: test-deps lint containers
	$(PYTHON) -m pytest $(PYTEST_ARGS)
