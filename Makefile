# The README's commands. Everything installs into .venv from scratch.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
G10 := $(VENV)/bin/galaxy10
PYTHON ?= python3
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONUNBUFFERED := 1

# Demo data: the real file when the user has put it in data/, else the synthetic default.
REAL := data/Galaxy10_DECals.h5
SYNTH := data/galaxy10_synthetic.h5
DATA := $(if $(wildcard $(REAL)),$(REAL),$(SYNTH))
SYNTH_N ?= 4000
STUDY ?= tune-quick
REPORT_DIR ?= reports/$(STUDY)
# pytest-xdist workers for make test (auto: one per core, at most 4; 0 runs in one process).
TEST_WORKERS ?= auto

.PHONY: help setup setup-dev demo test test-fast bench clean

help:
	@echo "make demo   - create .venv, install, run the platform end to end (data, tuning, ensembles, report)"
	@echo "make test   - create .venv, install with dev extras, ruff check and format --check, the whole test suite (CI runs this)"
	@echo "make test-fast - the tests not marked slow"
	@echo "make bench  - run every benchmark in benchmarks/ with its quick defaults"

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed

$(SYNTH): | $(VENV)/.installed
	$(G10) data synth --n $(SYNTH_N) --size 256 --seed 0 --out $@

demo: $(VENV)/.installed $(if $(wildcard $(REAL)),,$(SYNTH))
	$(G10) data info $(DATA)
	$(G10) data split $(DATA)
	$(G10) baseline --data $(DATA)
	$(G10) tune --config experiments/configs/tune_quick.yaml --study $(STUDY) --data $(DATA)
	$(G10) ensemble --study $(STUDY) --config experiments/configs/ensemble.yaml
	$(G10) report --study $(STUDY) --out $(REPORT_DIR)
	$(G10) data gallery $(DATA) --out $(REPORT_DIR)-gallery.png
	@echo
	@echo "Demo finished. Report: $(REPORT_DIR)/report.html (data gallery: $(REPORT_DIR)-gallery.png)"
	@echo "  MLflow UI:        $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
	@echo "  Optuna dashboard: $(VENV)/bin/optuna-dashboard sqlite:///optuna.db"
	@echo "  Prediction page:  $(VENV)/bin/galaxy10 serve --model $(STUDY)@champion"

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4

test-fast: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --maxprocesses 4

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
