"""``run_bench``: every case of a preset, timed and measured in one run, with the ratios between them.

Per case: median/min/max of ``repeats`` timed calls after ``warmup`` calls, nominal FLOPs and
FLOP/s, the ratio to the bare heads-concatenated GEMM timed in the same run (``x_floor``; the GEMM
in ``settings.floor_dtype``, :func:`ditflow_fast.bench.rows.floor_dtype`: bf16 for bf16 inputs) and
the paired ratio (``x_floor_paired``: the GEMM is called again just before each timed call of an AMF
row, and the median of the per-repeat ratios is kept, so that both calls of a pair see the machine in
the same state; the row's own times are then taken after a GEMM, with colder caches), the
speed-up and the memory ratio against the research row of the same mode, the measured peak extra
memory (or, for a materialising case that cannot fit, its prediction, labelled), and on a GPU
with a known datasheet the achieved fraction of the performance model's floor.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Callable

import torch

from .. import _native
from . import perf_model, rows
from .cases import MODES, CaseSpec, build_case, plan_cases, resolve_impls
from .memory import fit_limit, measure, predicted_bytes
from .presets import get_preset
from .record import git_info, machine_info, now_utc, versions
from .refcheck import check_case, check_shape, describe, shape_note
from .spec import FLOOR, elem_size, parse_dtype
from .timing import paired_ratio, summarize, time_callable, time_paired


def _cpu_native_flag(name: str) -> bool | None:
    """A yes/no op of the native extension (``argmax_screen_enabled``: the ``cpu`` backend's float32 argmax takes
    the bf16 screen; ``onednn_gemm_enabled``: its float32 GEMMs go to oneDNN) as it stood in this run; None: not
    built."""
    if _native.why_unavailable():
        return None
    return bool(getattr(_native.ops(), name)())


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def _fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _run_case(spec: CaseSpec, *, limit: int, warmup: int, repeats: int, memory: bool,
              check: dict | None = None, floor: Callable[[], object] | None = None) -> dict:
    """One row. ``check`` (``{"shape", "refs"}``, None with ``--no-refcheck``): compare the row's AMF with
    the float64 reference first; a row that disagrees is marked ``wrong`` and neither timed nor measured.
    ``floor``: the GEMM floor's callable, timed before each repeat of an AMF row (``x_floor_paired``)."""
    impl = rows.get(spec.impl)
    row = {**spec.as_dict(), "kind": impl.kind, "status": "ok", "reason": None,
           "predicted_bytes": predicted_bytes(spec), "peak_extra_bytes": None, "memory_label": None,
           "refcheck": None}
    why = impl.skip_reason(spec)
    if why:
        return {**row, "status": "skipped", "reason": why}
    pred = row["predicted_bytes"]
    if pred is not None and pred > limit:
        return {**row, "status": "predicted", "peak_extra_bytes": pred, "memory_label": "predicted",
                "reason": f"predicted peak {_fmt_bytes(pred)} > fit limit {_fmt_bytes(limit)}: not run"}
    if check is not None:
        try:
            entry = check_case(spec, check["refs"], shape=check["shape"])
        except Exception as exc:  # the row's own call failed on the check problem
            traceback.print_exc()
            return {**row, "status": "error", "reason": f"reference check: {type(exc).__name__}: {exc}"}
        row["refcheck"] = entry
        if entry["passed"] is False:
            return {**row, "status": "wrong", "reason": describe(entry)}
        if entry["passed"] and not entry["problem"]["reduced"] and warmup > 0:
            warmup -= 1  # the check ran this very case once: it was the first warm-up call
    try:
        fn = build_case(spec)
        if floor is not None and impl.computes_amf:
            times, floor_times = time_paired(fn, floor, warmup=warmup, repeats=repeats, device=spec.device)
            row.update(floor_times_s=floor_times, x_floor_paired=paired_ratio(times, floor_times))
        else:
            times = time_callable(fn, warmup=warmup, repeats=repeats, device=spec.device)
        del fn
        gc.collect()
        row.update(times_s=times, **summarize(times))
    except Exception as exc:  # one failing case (out of memory, a backend bug) must not end the run
        traceback.print_exc()
        return {**row, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    if memory and impl.computes_amf:  # the floor is a yardstick, not an AMF row: no probe
        try:
            probe = measure(spec)
            row.update(peak_extra_bytes=probe["peak_extra_bytes"], memory_label="measured",
                       memory_method=probe["method"])
        except Exception as exc:
            row["memory_error"] = f"{type(exc).__name__}: {exc}"
    return row


def _derive(records: list[dict], gpu_name: str | None) -> None:
    """Fill FLOPs, ratios to the floor and to the research row, and the datasheet-floor fraction."""
    floor = next((r for r in records if r["kind"] == "floor" and r["status"] == "ok"), None)
    research = {r["mode"]: r for r in records if r["kind"] == "research"}
    peak = perf_model.peak_for(gpu_name)
    for r in records:
        p = get_preset(r["preset"]).geometry
        r["flops"] = perf_model.flops(p, r["mode"])
        ok = r["status"] == "ok"
        r["flops_per_s"] = r["flops"] / r["median_s"] if ok else None
        r["x_floor"] = r["median_s"] / floor["median_s"] if ok and floor else None
        base = research.get(r["mode"])
        r["speedup_vs_research"] = (base["median_s"] / r["median_s"]
                                    if ok and base and base["status"] == "ok" else None)
        r["memory_ratio_vs_research"] = None
        if base and base["peak_extra_bytes"] and r["peak_extra_bytes"]:
            r["memory_ratio_vs_research"] = base["peak_extra_bytes"] / r["peak_extra_bytes"]
            r["memory_ratio_label"] = ("predicted" if "predicted" in (base["memory_label"], r["memory_label"])
                                       else "measured")
        if peak and ok:
            elem = elem_size(parse_dtype(r["dtype"]))
            r["datasheet_floor_s"] = perf_model.floor_seconds(p, r["mode"], elem, peak)
            r["floor_fraction"] = r["datasheet_floor_s"] / r["median_s"]


def run_bench(preset: str, *, impls: list[str] | None = None, modes: tuple[str, ...] = MODES,
              dtype: str | None = None, device: str | None = None, repeats: int = 5, warmup: int = 1,
              memory: bool = True, mem_limit: int | None = None, seed: int = 0, refcheck: bool = True,
              layout: str = "bhtd",
              progress: Callable[[str], None] = print) -> dict:
    """Run every case of ``preset`` and return the record (``rows`` plus machine, versions, commit)."""
    chosen = get_preset(preset)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    names = resolve_impls(impls)
    specs = plan_cases(preset, impls=names, modes=tuple(modes), dtype=dtype, device=device, seed=seed, layout=layout)
    limit = fit_limit(device, mem_limit)
    machine = machine_info()
    floor_dtype = str(rows.floor_dtype(CaseSpec(FLOOR, FLOOR, preset, dtype, device))).removeprefix("torch.")
    progress(f"preset {preset}: {chosen.summary}; {dtype} on {device} (GEMM floor in {floor_dtype}); {repeats} "
             f"repeats after {warmup} warm-up; fit limit {_fmt_bytes(limit)}")
    # Other processes on the machine distort timings; the load average says how much was going on.
    check = None
    if refcheck:
        shape = check_shape(preset, dtype, device)
        check = {"shape": shape, "refs": {}}
        progress("refcheck: each row's AMF against the float64 reference before it is timed; "
                 + (shape_note(preset, shape, dtype) or "on the preset's own problem"))
    load_start = _loadavg()
    records = []
    floor = None
    for i, spec in enumerate(specs, 1):
        progress(f"[{i}/{len(specs)}] {spec.impl} {spec.mode} ...")
        row = _run_case(spec, limit=limit, warmup=warmup, repeats=repeats, memory=memory, check=check, floor=floor)
        records.append(row)
        if spec.impl == FLOOR and row["status"] == "ok":
            floor = build_case(spec)  # the planner puts the floor first: every AMF row is paired with it
        if row["refcheck"] and row["refcheck"]["status"] != "n/a" and row["status"] != "wrong":
            progress(f"      refcheck {describe(row['refcheck'])}")
        if row["status"] == "ok":
            mem = f", peak extra {_fmt_bytes(row['peak_extra_bytes'])}" if row["peak_extra_bytes"] is not None else ""
            paired = f", {row['x_floor_paired']:.2f}x of the GEMM, paired" if row.get("x_floor_paired") else ""
            spread = f"(min {row['min_s']:.4f}, max {row['max_s']:.4f})"
            progress(f"      median {row['median_s']:.4f} s {spread}{paired}{mem}")
        else:
            progress(f"      {row['status']}: {row['reason']}")
        if row.get("memory_error"):
            progress(f"      memory not measured: {row['memory_error']}")
    _derive(records, machine["gpu"])
    return {"schema": 1, "timestamp": now_utc(), "preset": chosen.as_dict(), "dtype": dtype, "device": device,
            "settings": {"repeats": repeats, "warmup": warmup, "memory": memory, "fit_limit_bytes": limit,
                         "floor_dtype": floor_dtype,
                         "impls": names, "modes": list(modes), "seed": seed, "layout": layout,
                         "torch_threads": torch.get_num_threads(),
                         "loadavg_start": load_start, "loadavg_end": _loadavg(),
                         "cpu_argmax_screen": _cpu_native_flag("argmax_screen_enabled"),
                         "cpu_onednn_gemm": _cpu_native_flag("onednn_gemm_enabled"),
                         "refcheck": refcheck,
                         "refcheck_shape": list(check["shape"]) if check else None,
                         "refcheck_note": shape_note(preset, check["shape"], dtype) if check else None,
                         "refcheck_reference_s": (sum(r.seconds for r in check["refs"].values())
                                                  if check else None)},
            "machine": machine, "versions": versions(), "git": git_info(), "rows": records}
