"""The human-readable table of a benchmark record."""

from __future__ import annotations

from . import perf_model
from .presets import get_preset


def _t(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def _x(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def _mem(row: dict) -> str:
    b = row.get("peak_extra_bytes")
    if b is None:
        return "-"
    text = f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB"
    return text + (" (predicted)" if row.get("memory_label") == "predicted" else "")


def _check(row: dict) -> str:
    """The refcheck cell: the row's error against its tolerance, "n/a" for the GEMM floor."""
    c = row.get("refcheck")
    if not c:
        return "-"
    if c["status"] in ("n/a", "unchecked"):
        return c["status"]
    return f"{'ok' if c['passed'] else 'WRONG'} {c['err']:.2g} (tol {c['tol']:.0e})"


def _median(row: dict) -> str:
    if row["status"] == "wrong":
        return f"WRONG (max err {row['refcheck']['max_abs_err']:.3g})"
    status = {"ok": None, "predicted": "not run"}.get(row["status"], row["status"])
    return status or _t(row.get("median_s"))


def format_table(record: dict) -> str:
    rows = record["rows"]
    gpu = any("floor_fraction" in r for r in rows)
    head = ["impl", "mode", "median", "min", "max", "refcheck", "GFLOP/s", "x GEMM", "paired", "vs research",
            "peak extra mem", "mem: research/row"] + (["% datasheet floor"] if gpu else [])
    table = [head]
    notes = []
    for r in rows:
        ok = r["status"] == "ok"
        mem_ratio = _x(r.get("memory_ratio_vs_research"), 1)
        if r.get("memory_ratio_label") == "predicted" and mem_ratio != "-":
            mem_ratio += " (pred.)"
        line = [r["impl"], r["mode"], _median(r), _t(r.get("min_s")), _t(r.get("max_s")), _check(r),
                f"{r['flops_per_s'] / 1e9:.1f}" if ok else "-", _x(r.get("x_floor")),
                _x(r.get("x_floor_paired")), _x(r.get("speedup_vs_research")), _mem(r), mem_ratio]
        if gpu:
            line.append(f"{100 * r['floor_fraction']:.1f}%" if r.get("floor_fraction") else "-")
        table.append(line)
        if not ok:
            notes.append(f"  {r['impl']} {r['mode']}: {r['status']}: {r['reason']}")
        elif (r.get("refcheck") or {}).get("status") == "unchecked":
            notes.append(f"  {r['impl']} {r['mode']}: refcheck {r['refcheck']['reason']}")
        elif r.get("memory_error"):
            notes.append(f"  {r['impl']} {r['mode']}: memory not measured: {r['memory_error']}")
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    p = record["preset"]
    fd = record["settings"].get("floor_dtype")  # None in records from before it was kept
    title = (f"preset {p['name']}: H={p['heads']} d={p['head_dim']} F={p['frames']} h={p['height']} w={p['width']} "
             f"N={p['tokens']} text={p['text_tokens']}; {record['dtype']} on {record['device']}"
             f"{f', GEMM floor in {fd}' if fd else ''} "
             f"({_machine(record['machine'])}); "
             f"commit {(record['git']['commit'] or 'unknown')[:10]}{' (dirty)' if record['git']['dirty'] else ''}")
    legend = (f"x GEMM: median / median of the bare {fd + ' ' if fd else ''}Q_cat @ K_cat^T of the same shape in "
              "this run "
              "(fwd+bwd does ~4 GEMMs of work). paired: the median over repeats of the row's time / the GEMM's, "
              "the GEMM called again just before each timed call. "
              "vs research: research median / row median. "
              "mem: research peak / row peak. FLOPs: 2*N^2*H*d per forward, ~4x for soft fwd+bwd.")
    st = record["settings"]
    if st.get("loadavg_start"):
        title += (f"\n{st['repeats']} repeats after {st['warmup']} warm-up, {st['torch_threads']} torch threads; "
                  f"load average {st['loadavg_start'][0]} at start, {st['loadavg_end'][0]} at end "
                  "(other processes on the machine distort timings)")
    if st.get("layout") == "bthd":
        title += "\nq, k: [B, H, T, d] views of [B, T, H, d] tensors (--layout bthd)"
    if st.get("cpu_argmax_screen") is not None:
        title += ("\ncpu argmax: " + ("bf16 screen + float64 rescoring (exact)" if st["cpu_argmax_screen"]
                                       else "float32 GEMM tiles (screen off or no native bf16)"))
    if st.get("cpu_onednn_gemm") is not None:
        title += ("\ncpu float32 GEMMs: " + ("oneDNN (row gemm_onednn times its GEMM)"
                                             if st["cpu_onednn_gemm"] else "MKL"))
    if st.get("refcheck") is False:
        title += "\nrefcheck: off (--no-refcheck): no row was compared with the float64 reference"
    elif st.get("refcheck"):
        title += ("\nrefcheck: each row's AMF (and in fwd+bwd its dq, dk) against the float64 reference before "
                  "timing; a row that disagrees is WRONG and not timed; "
                  + (st.get("refcheck_note") or "on the preset's own problem"))
    legend += (" refcheck: soft rows relative L2 error, argmax rows the largest float64 score gap of a chosen key, "
               "against the tolerance of docs/amf.md (the research row: its own, for input-dtype accumulation).")
    out = [title, *lines, legend]
    if notes:
        out += ["notes:", *notes]
    if not gpu:
        peaks = perf_model.floor_table(get_preset(p["name"]).geometry)
        best = ", ".join(f"{r['gpu']} {r['floor_ms']:.3g} ms" for r in peaks if r["mode"] == "soft_fwd_bwd")
        out.append(f"datasheet floor of soft fwd+bwd in bf16 (perf_model): {best}")
    return "\n".join(out)


def _machine(m: dict) -> str:
    """The GPU, else the CPU, its cores and its kernel-relevant instruction sets (none in records before 2026-12-07)."""
    if m["gpu"]:
        return m["gpu"]
    isa = m.get("cpu_isa")
    return f"{m['cpu']}, {m['cores']} cores" + (f", {' '.join(isa) or 'no AVX2'}" if isa is not None else "")

