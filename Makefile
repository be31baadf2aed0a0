# The project's commands. `make test` and `make demo` create the environment when needed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null)
export FACILITY_SITE ?= $(CURDIR)/.site
export FACILITY_INCLUDE ?= $(CURDIR)/include
PYTEST_ARGS ?=

.PHONY: venv lock lint test demo airflow bench site-up site-down site-status clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@if [ -z "$(UV)" ]; then python3 -m pip install -q uv==0.13.8; fi
	uv venv -q --allow-existing -p python3.11 $(VENV)
	uv pip sync -q -p $(PY) requirements.lock
	uv pip install -q -p $(PY) --no-deps -e .
	@touch $@

lock:
	uv pip compile requirements.txt --python-version 3.11.7 -o requirements.lock
	uv pip compile include/local_site/rucio-server.txt --python-version 3.11.7 -o include/local_site/rucio-server.lock

lint: venv
	$(VENV)/bin/ruff check .

# The test session brings up its own local site (PostgreSQL, Rucio, S3) in a temporary directory and tears it down.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

site-up: venv
	$(PY) -m facility_data.localsite.cli up

site-down: venv
	$(PY) -m facility_data.localsite.cli down

site-status: venv
	$(PY) -m facility_data.localsite.cli status

demo: venv
	$(PY) -m facility_data.demo.run

airflow: venv site-up
	$(PY) -m facility_data.localsite.cli airflow

bench: venv site-up
	@for b in bench/*.py; do $(PY) $$b || exit 1; done

clean: venv
	$(PY) -m facility_data.localsite.cli clean
