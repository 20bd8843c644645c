"""pytest-benchmark suite of the AMF cases: ``pytest benchmarks/ --benchmark-only``.

The cases are the harness's own (``ditflow_fast.bench.cases``, each row's callable from the registry
``ditflow_fast.bench.rows``): the same inputs and callables as ``ditflow-fast bench``, timed here by
pytest-benchmark. What pytest-benchmark cannot measure is
added to each record's ``extra_info``: the ratio to the bare GEMM floor timed in the same session,
nominal FLOPs and FLOP/s, and the peak extra memory from a fresh subprocess.

Environment (all optional):
  DITFLOW_BENCH_PRESET    preset name (default: the CLI's default preset; see ``ditflow-fast bench --list-presets``)
  DITFLOW_BENCH_BACKENDS  comma-separated backends/peers (default: all but ``reference``)
  DITFLOW_BENCH_MODES     comma-separated among argmax,soft,soft_fwd_bwd
  DITFLOW_BENCH_DTYPE     float32 on CPU / bfloat16 on CUDA by default
  DITFLOW_BENCH_REPEATS / DITFLOW_BENCH_WARMUP   rounds (default 5 / 1)
  DITFLOW_BENCH_MEMORY    0 to skip the memory probe

Save results with ``--benchmark-json benchmarks/results/pytest-<machine>.json``.
"""

from __future__ import annotations

import os

import pytest

from ditflow_fast.bench import perf_model, rows
from ditflow_fast.bench.cases import FLOOR, MODES, CaseSpec, build_case, plan_cases, resolve_impls, skip_reason
from ditflow_fast.bench.memory import fit_limit, measure, predicted_bytes
from ditflow_fast.bench.presets import DEFAULT_PRESET, get_preset
from ditflow_fast.bench.runner import default_device, default_dtype
from ditflow_fast.bench.timing import summarize, synchronize, time_callable


def _env_list(name: str):
    raw = os.environ.get(name, "")
    return [t.strip() for t in raw.split(",") if t.strip()] or None


PRESET = os.environ.get("DITFLOW_BENCH_PRESET", DEFAULT_PRESET)
DEVICE = os.environ.get("DITFLOW_BENCH_DEVICE") or default_device()
DTYPE = os.environ.get("DITFLOW_BENCH_DTYPE") or default_dtype(DEVICE)
REPEATS = int(os.environ.get("DITFLOW_BENCH_REPEATS", "5"))
WARMUP = int(os.environ.get("DITFLOW_BENCH_WARMUP", "1"))
MEMORY = os.environ.get("DITFLOW_BENCH_MEMORY", "1") != "0"
SPECS = plan_cases(PRESET, impls=resolve_impls(_env_list("DITFLOW_BENCH_BACKENDS")),
                   modes=tuple(_env_list("DITFLOW_BENCH_MODES") or MODES), dtype=DTYPE, device=DEVICE)


@pytest.fixture(scope="session")
def floor_median() -> float:
    """Median seconds of the bare heads-concatenated GEMM, timed once per session with the harness loop."""
    fn = build_case(CaseSpec(FLOOR, FLOOR, PRESET, DTYPE, DEVICE))
    return summarize(time_callable(fn, warmup=WARMUP, repeats=REPEATS, device=DEVICE))["median_s"]


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_amf_case(benchmark, spec: CaseSpec, floor_median: float):
    why = skip_reason(spec)
    if why:
        pytest.skip(why)
    preset = get_preset(PRESET)
    geometry = preset.geometry
    benchmark.group = f"{PRESET} {spec.mode}"
    benchmark.extra_info.update(spec.as_dict(), kind=rows.get(spec.impl).kind, preset_shape=preset.as_dict(),
                                flops=perf_model.flops(geometry, spec.mode))
    pred = predicted_bytes(spec)
    limit = fit_limit(DEVICE)
    if pred is not None and pred > limit:
        pytest.skip(f"predicted peak {pred / 1e9:.2f} GB > fit limit {limit / 1e9:.2f} GB: not run")
    fn = build_case(spec)

    def run():
        out = fn()
        synchronize(DEVICE)
        return out

    benchmark.pedantic(run, rounds=REPEATS, warmup_rounds=WARMUP, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: the case ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(x_floor=median / floor_median, floor_median_s=floor_median,
                                flops_per_s=perf_model.flops(geometry, spec.mode) / median)
    if MEMORY and rows.get(spec.impl).computes_amf:
        del fn
        probe = measure(spec)
        benchmark.extra_info.update(peak_extra_bytes=probe["peak_extra_bytes"], memory_method=probe["method"])
