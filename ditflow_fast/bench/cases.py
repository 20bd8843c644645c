"""The benchmark cases, defined once: ``ditflow-fast bench``, the memory probe subprocess and the
pytest-benchmark suites in ``benchmarks/`` all plan and build their timed callables here.

A case (:class:`~ditflow_fast.bench.spec.CaseSpec`) is one row of the registry
(:mod:`ditflow_fast.bench.rows`) in one mode on one preset; everything a case does, it asks its row.
"""

from __future__ import annotations

from collections.abc import Callable

from . import rows
from .presets import get_preset
from .spec import FLOOR, MODES, RESEARCH, TEMPERATURE, CaseSpec, make_inputs, parse_dtype, upstream_grad

__all__ = ["FLOOR", "MODES", "RESEARCH", "TEMPERATURE", "CaseSpec", "build_case", "build_forward", "make_inputs",
           "parse_dtype", "plan_cases", "resolve_impls", "skip_reason", "upstream_grad"]


def skip_reason(spec: CaseSpec) -> str | None:
    """Why this case cannot run here (a backend's refusal, a missing peer package), or None."""
    return rows.get(spec.impl).skip_reason(spec)


def build_forward(spec: CaseSpec):
    """``(forward, q, k)`` of an AMF case (see :meth:`ditflow_fast.bench.rows.Row.forward`)."""
    return rows.get(spec.impl).forward(spec)


def build_case(spec: CaseSpec) -> Callable[[], object]:
    """The zero-argument callable that runs ``spec`` once (inputs built now, outside any timing)."""
    return rows.get(spec.impl).build(spec)


def plan_cases(preset: str, *, impls: list[str], modes: tuple[str, ...] = MODES, dtype: str = "float32",
               device: str = "cpu", seed: int = 0, layout: str = "bhtd") -> list[CaseSpec]:
    """The floor (and in a CPU bf16 run the float32 GEMM), then per mode the research row and each of
    ``impls`` (backends and peers)."""
    get_preset(preset)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"modes must be among {MODES}, got {m!r}")
    table = rows.all_rows()
    always = [r for r in table.values() if r.selection == "always"]

    def case(name, mode):
        return CaseSpec(name, mode, preset, dtype, device, seed, layout=layout)

    def joins(row, mode):  # an "always" row may join only some runs (the float32 GEMM: CPU bf16 runs)
        return row.applies is None or row.applies(case(row.name, mode))

    # A row with a mode of its own (the floor's "gemm") runs once, ahead of the AMF modes.
    specs = [case(r.name, m) for r in always for m in r.planned_modes if m not in MODES and joins(r, m)]
    for mode in modes:
        specs.extend(case(r.name, mode) for r in always if mode in r.planned_modes and joins(r, mode))
        # A peer only appears in the modes it computes (faiss has no soft mode, SDPA no argmax).
        specs.extend(case(name, mode) for name in impls if mode in table[name].planned_modes)
    return specs


def resolve_impls(requested: list[str] | None) -> list[str]:
    """Rows to bench besides the research row and the floor: the requested names (checked), or every
    row selected by default (every backend but the materialising ``reference``, every peer)."""
    table = rows.all_rows()
    if requested is None:
        return [n for n, r in table.items() if r.selection == "default"]
    unknown = [n for n in requested if n not in table]
    if unknown:
        names = [n for n, r in table.items() if r.selection != "always"]
        raise ValueError(f"unknown backend(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}")
    return [n for n in requested if table[n].selection != "always"]
