# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if absent and installs torch==2.13.0 (the CPU wheel) before anything else,
# because an unpinned torch would pull gigabytes of CUDA packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minicpmv-installed

.PHONY: install demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/minicpmv inspect-image minicpmv/assets/example.png

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
