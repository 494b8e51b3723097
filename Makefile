# fashion-recs: the two commands a user needs (`make demo`, `make test`) and a few helpers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATE ?= 2026-11-01
DEMO_DATA := data/raw/demo

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
export FASHION_RECS_CONFIG ?= $(CURDIR)/config/retailer.yaml
export AIRFLOW_CONN_FASHION_RECS_RESULTS ?= {"conn_type": "sqlite", "host": "$(CURDIR)/data/results.db"}

.PHONY: venv data demo test lint airflow bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

data: venv
	$(BIN)/python -m fashion_recs.synthetic --out $(DEMO_DATA) --end-date $(DEMO_DATE)

$(AIRFLOW_HOME)/airflow.db: | venv
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)

demo: venv $(AIRFLOW_HOME)/airflow.db
	@test -f $(DEMO_DATA)/truth/summary.json || $(MAKE) --no-print-directory data
	$(BIN)/python scripts/run_demo.py --logical-date $(DEMO_DATE)

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

airflow: venv $(AIRFLOW_HOME)/airflow.db
	@test -f $(DEMO_DATA)/truth/summary.json || $(MAKE) --no-print-directory data
	# standalone starts its components as `airflow ...` subprocesses: the venv must be on PATH.
	PATH="$(CURDIR)/$(BIN):$$PATH" airflow standalone

bench: venv
	for b in events fbt similar personal; do $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf data .airflow
