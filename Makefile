# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if absent and installs torch==2.13.0 (the CPU wheel) before anything else,
# because an unpinned torch would pull gigabytes of CUDA packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# the base package (what `make demo` needs) and the dev set (tests, linters, every extra)
BASE := $(VENV)/.minicpmv-base
STAMP := $(VENV)/.minicpmv-installed

.PHONY: install demo-install browser demo test test-avx2 check lint format dist-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BASE): $(PY) pyproject.toml
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $(BASE)

# llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat, ggml-org/llama.cpp#20824) on
# some AMX CPUs, as on the Xeon VMs this project runs on: there llama-cpp-python is built without
# them (its AVX-512 kernels stay); pip builds it from source either way
AMX := $(shell grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && echo yes)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

$(STAMP): $(BASE) pyproject.toml
ifeq ($(AMX),yes)
	CMAKE_ARGS="-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'" $(PIP) --no-cache-dir 'llama-cpp-python>=0.3'
endif
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo-install: $(BASE)

install: $(STAMP)

demo: $(BASE)
	$(VENV)/bin/minicpmv generate -p "How many shapes are there?" --image minicpmv/assets/demo-scene.png
	$(VENV)/bin/minicpmv generate -p "What is the total?" --image minicpmv/assets/demo-receipt.png

# The web page test drives Debian's chromium (Playwright with executable_path; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "make: chromium is not installed and this is not root: the web page test will be skipped"; \
	  fi; }

# The whole suite, after the linter: what CI runs (.ci/run).
test: $(STAMP) browser lint
	$(PY) -m pytest

# The fast tier for everyday work: every test not marked slow, two workers of one thread each
# (2 min 10 s on a 2-core AMD EPYC; the whole suite takes about 9 min).
check: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n 2

# The whole suite as on a CPU with AVX2 only (no AVX-512, AMX or AVX-VNNI), run on a CPU with them:
# scripts/avx2_suite/sitecustomize.py caps every library and hides the flags (tests that need VNNI skip)
test-avx2: $(STAMP)
	PYTHONPATH=scripts/avx2_suite $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check minicpmv tests scripts benchmarks
	$(VENV)/bin/ruff format --check minicpmv tests scripts benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix minicpmv tests scripts benchmarks
	$(VENV)/bin/ruff format minicpmv tests scripts benchmarks

# The wheel and sdist (python -m build) each install into a clean venv and answer the demo question.
dist-check: $(STAMP)
	rm -rf dist
	$(PY) -m build --quiet --outdir dist . >/dev/null
	PYTHON=$(PYTHON) sh scripts/check_dist.sh dist

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
