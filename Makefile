# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo export bench soak pi-check clean

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

# runtime/detect.py on emulated Raspberry Pi 4 / 5 userlands vs x86-64 (docs/runtime.md);
# sets itself up once under .cache/pi/ (qemu-user-static, mmdebstrap, aarch64 wheels)
pi-check: setup
	$(PY) scripts/pi_check.py

clean:
	rm -rf .pytest_cache demo-out
