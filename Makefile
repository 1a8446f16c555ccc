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

# torch==2.13.0 is pinned first so the embeddings extra takes the local CPU wheel.
$(VENV)/.installed-dev: pyproject.toml requirements.txt requirements-dev.txt $(VENV)/.installed-runtime
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,embeddings,postgres]"
	touch $@

examples: $(VENV)/.installed-runtime
	$(PY) examples/main_example.py all

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
