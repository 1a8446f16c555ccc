# Two entry points for a newcomer; each creates .venv and installs what it needs on first use.
#   make examples   run every example on the embedded defaults (SQLite files, no server, no API key)
#   make test       run the test suite (pytest)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: examples test lint bench clean

$(VENV)/.installed-runtime: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# The embeddings extra needs torch (through sentence-transformers); torch==2.13.0 is installed first, alone.
# With pip's defaults that is PyPI's build: on Linux x86_64 the CUDA build, which also pulls the nvidia-*
# libraries (gigabytes, needed only on an NVIDIA GPU); on macOS and Windows the CPU build. The tests need
# only the CPU build; on Linux get it from PyTorch's CPU-only index (a 190 MB wheel, 750 MB installed):
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A pip configured to find a local torch wheel (find-links, a mirror) takes that one when it is left empty.
TORCH_INDEX_URL ?=
$(VENV)/.installed-dev: pyproject.toml requirements.txt requirements-dev.txt $(VENV)/.installed-runtime
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -e ".[dev,embeddings,postgres]"
	touch $@

examples: $(VENV)/.installed-runtime
	$(PY) examples/main_example.py all

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples --exclude tests/fixtures --exclude tests/test_typing.py
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
