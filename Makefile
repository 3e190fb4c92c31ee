# ChangeCLIP for QGIS — developer and user entry points. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV   := .venv
PY     := $(VENV)/bin/python
export QT_QPA_PLATFORM := offscreen
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo test test-fast lint package bench screenshots clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

setup:  ## install QGIS (Debian) if missing, create .venv, install backend + tools (idempotent)
	@bash scripts/setup.sh

demo: setup  ## set up, then run the main job on the sample pair through qgis_process
	@$(PY) scripts/demo.py

lint: setup  ## ruff over everything, bandit over the plugin
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/bandit -q -r changeclip_qgis -c pyproject.toml

test: setup lint  ## set up, lint, run the whole test suite (backend + plugin in real QGIS)
	@$(PY) -m pytest

test-fast: setup  ## the suite without tests marked slow
	@$(PY) -m pytest -m "not slow"

package: setup  ## build dist/changeclip_qgis-<version>.zip for QGIS "Install from ZIP"
	@$(PY) scripts/package.py

bench: setup  ## CPU benchmarks; prints a table, writes build/bench.json
	@$(PY) -m changeclip bench --out build/bench.json

screenshots: setup  ## render the dock and a result map into docs/*.png
	@$(PY) scripts/screenshots.py

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist .pytest_cache .ruff_cache
