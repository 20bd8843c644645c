# Developer loop. Every target sets up .venv first (CPU torch 2.13.0 from the local wheel;
# on a GPU machine install your CUDA torch into .venv before `make setup`).
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?=
DEMO_ARGS ?=

.PHONY: setup test lint demo bench bench-gpu gpu-check gpu-wheels gpu-rehearsal fresh-check clean

setup: $(VENV)/.installed

# --no-build-isolation lets setup.py see the installed torch and build the native CPU extension
# (it prints why and goes on without it when there is no compiler).
$(VENV)/.installed: pyproject.toml setup.py csrc/sources.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 'setuptools>=64' wheel
	$(PY) -m pip install -q --no-build-isolation -e '.[dev,cluster]'  # cluster: ray, for the batch tests
	touch $@

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check .

# One thread: the tiny model's small ops run faster single-threaded than two threads contending.
demo: setup
	$(VENV)/bin/ditflow-fast demo --threads 1 $(DEMO_ARGS)

bench: setup
	$(VENV)/bin/ditflow-fast bench $(if $(PRESET),--preset $(PRESET),)

# The GPU checks and timings, for a machine with a CUDA device.
bench-gpu: setup
	$(PY) -m pytest -q -m gpu tests
	$(VENV)/bin/ditflow-fast bench --preset cogvideox-5b-f6

# The device check for the lent GPU machine (no network there; no `make setup`): the machine's own
# torch and triton, the carried wheels (.gpu_wheels/, `make gpu-wheels` here), 8 minutes, OUTDIR/summary.md.
# `make gpu-rehearsal` runs the same script here without a GPU, as CI does.
OUTDIR ?= build/gpu_check
gpu-check:
	bash scripts/gpu_check.sh $(OUTDIR)

gpu-wheels:
	bash scripts/fetch_gpu_wheels.sh

gpu-rehearsal:
	bash scripts/gpu_check/rehearse.sh build/gpu_check_rehearsal

# What CI sees: the README's commands on a fresh clone of the committed tree.
fresh-check:
	rm -rf /tmp/ditflow_fast_fresh && git clone -q . /tmp/ditflow_fast_fresh
	$(MAKE) -C /tmp/ditflow_fast_fresh lint test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache ditflow_demo
