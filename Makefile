# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: venv test demo bench gpu-check lint format browser clean

venv: $(STAMP)

# torch/torchvision are pinned to the releases this machine has on disk (pip's cap).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[app,test,faiss]"
	touch $(STAMP)

# The browser test drives Debian's chromium; `playwright install` cannot work offline.
browser:
	@test -x $(CHROMIUM) || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: venv browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: venv
	$(PY) -m symile_clinical demo --out demo-data

bench: venv
	$(PY) benchmarks/run_all.py

# Every CUDA path in one run on a GPU machine (benchmarks/gpu_check.py); exit 2 without CUDA.
gpu-check: venv
	$(PY) -m benchmarks.gpu_check

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) demo-data .pytest_cache .ruff_cache
