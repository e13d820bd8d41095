# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo export bench soak clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) scripts/demo.py

export: setup
	$(PY) scripts/export_all.py

bench: setup
	$(PY) benchmarks/run.py

soak: setup
	$(PY) -m pytest -m soak tests --run-soak

clean:
	rm -rf .pytest_cache demo-out
