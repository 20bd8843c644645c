# Developer loop. Every target sets up .venv first (CPU torch 2.13.0 from the local wheel, then the
# package with the exact versions CI tested: constraints.txt). On a GPU machine install your CUDA torch
# into .venv before `make setup`. `make test-latest` tests the newest versions the ranges allow instead.
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?=
DEMO_ARGS ?=
LOCK := constraints.txt

.PHONY: setup test test-latest lock lint demo bench bench-gpu gpu-check gpu-wheels gpu-rehearsal fresh-check clean

setup: $(VENV)/.installed

# --no-build-isolation lets setup.py see the installed torch and build the native CPU extension
# (it prints why and goes on without it when there is no compiler). LOCK= installs from the ranges alone.
$(VENV)/.installed: pyproject.toml setup.py csrc/sources.txt $(LOCK)
	@echo "setup 1/3: Python environment $(VENV) and torch 2.13.0 (CPU, local wheel)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 'setuptools>=64' wheel
	@echo "setup 2/3: dependencies $(if $(LOCK),pinned by $(LOCK),at the newest versions the ranges allow) (1-2 minutes)"
	$(PY) -m pip install -q $(if $(LOCK),-c $(LOCK)) --no-build-isolation -e '.[dev,cluster]'  # cluster: ray, for the batch tests
	@echo "setup 3/3: done ($$($(PY) -c 'from ditflow_fast import _native as n; print(n.why_unavailable() or "native CPU kernel built")'))"
	touch $@

test: setup
	$(PY) -m pytest -q tests

# The newest versions pyproject's ranges allow, in a separate environment, so a breaking release shows here
# before a user meets it. `make lock` then records them as the new constraints.txt.
test-latest:
	$(MAKE) VENV=.venv-latest LOCK= test

lock:
	test -x .venv-latest/bin/python || $(MAKE) VENV=.venv-latest LOCK= setup
	{ sed -n '1,3p' $(LOCK); .venv-latest/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+cpu$$/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

lint: setup
	$(VENV)/bin/ruff check .

# One thread: the tiny model's small ops run faster single-threaded than two threads contending.
demo: setup
	$(VENV)/bin/ditflow-fast demo --threads 1 $(DEMO_ARGS)

# Results go to build/bench/ (to record them in the repository, run `ditflow-fast bench` without --out).
bench: setup
	$(VENV)/bin/ditflow-fast bench $(if $(PRESET),--preset $(PRESET),) --out build/bench/results.jsonl

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
	rm -rf $(VENV) .venv-latest build *.egg-info .pytest_cache .ruff_cache ditflow_demo ditflow_demo_*
