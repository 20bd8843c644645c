# Developer loop. Every target sets up .venv first (CPU torch 2.13.0 from the local wheel;
# on a GPU machine install your CUDA torch into .venv before `make setup`).
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?=

.PHONY: setup test lint bench bench-gpu fresh-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/ditflow-fast bench $(if $(PRESET),--preset $(PRESET),)

# The GPU checks and timings, for a machine with a CUDA device.
bench-gpu: setup
	$(PY) -m pytest -q -m gpu tests
	$(VENV)/bin/ditflow-fast bench --preset cogvideox-5b-f6

# What CI sees: the README's commands on a fresh clone of the committed tree.
fresh-check:
	rm -rf /tmp/ditflow_fast_fresh && git clone -q . /tmp/ditflow_fast_fresh
	$(MAKE) -C /tmp/ditflow_fast_fresh lint test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
