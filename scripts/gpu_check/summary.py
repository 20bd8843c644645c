"""The device check's summary: every figure the steps wrote into OUTDIR, as ``summary.json`` and ``summary.md``.

Standard library only (it runs before the package is installed, and after a step was killed); it writes
through ``ditflow_fast/atomic.py`` loaded from its file, without importing the package. It reads
what is there and never fails on what is missing: a step that did not run or was cut short shows as
such, with its reason. Inputs, all in OUTDIR:

* ``steps.jsonl``: one line per step from ``check.py`` (name, status, seconds, timeout, reason, log);
* ``env.json``: device, driver and versions (``envinfo.py``);
* ``pytest-gpu.xml``: JUnit XML of ``pytest -m gpu``;
* ``bench.jsonl``: ``ditflow-fast bench`` records, one per preset;
* ``guided_step.json``: the guided optimisation step (``guided_step.py``);
* ``family_steps.json``: the families' real-size guided steps (``family_steps.py``);
* ``dry_run.txt``: ``ditflow-fast transfer --dry-run``'s table.

``python summary.py OUTDIR`` rewrites both files.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SCHEMA = 1
ATOMIC = Path(__file__).resolve().parents[2] / "ditflow_fast" / "atomic.py"


def _atomic():
    """The package's atomic writer, loaded from its file: it needs only the standard library, while
    ``import ditflow_fast`` would import torch, which this summary must do without."""
    spec = importlib.util.spec_from_file_location("_gpu_check_atomic", ATOMIC)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """The parseable lines of a JSON-lines file (a line cut by a kill is dropped)."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def pytest_results(path: Path) -> dict | None:
    """Counts, failures and skip reasons of a JUnit XML file; None when there is none."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures, skips = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            counts["failed" if tag == "failure" else "error"] += 1
            msg = (case.find(tag).get("message") or "").strip().splitlines()
            failures.append({"test": name, "message": msg[0][:300] if msg else ""})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = (case.find("skipped").get("message") or "").strip()[:200]
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    seconds = sum(float(s.get("time", 0) or 0) for s in root.iter("testsuite"))
    return {**counts, "seconds": round(seconds, 1), "failures": failures,
            "skip_reasons": [{"reason": r, "count": n} for r, n in sorted(skips.items(), key=lambda x: -x[1])]}


def bench_rows(record: dict) -> dict:
    """One preset's rows with each row's share of the bare GEMM's measured FLOP rate.

    ``share_of_gemm`` = (row FLOPs / row median) / (GEMM FLOPs / GEMM median): 100% would be a row
    that runs its nominal FLOPs (``2*N^2*H*d`` per forward, 4x for soft fwd+bwd) at the rate the
    bare ``Q_cat @ K_cat^T`` reached in the same run.
    """
    rows = record.get("rows", [])
    gemm = next((r for r in rows if r.get("impl") == "gemm" and r.get("status") == "ok"), None)
    gemm_rate = gemm["flops"] / gemm["median_s"] if gemm and gemm.get("median_s") else None
    out = []
    for r in rows:
        ok = r.get("status") == "ok" and r.get("median_s")
        rate = r["flops"] / r["median_s"] if ok and r.get("flops") else None
        out.append({
            "impl": r.get("impl"), "mode": r.get("mode"), "status": r.get("status"), "reason": r.get("reason"),
            "median_ms": round(r["median_s"] * 1e3, 4) if ok else None,
            "tflop_s": round(rate / 1e12, 2) if rate else None,
            "share_of_gemm": round(rate / gemm_rate, 4) if rate and gemm_rate else None,
            "x_floor": r.get("x_floor"), "x_floor_paired": r.get("x_floor_paired"),
            "speedup_vs_research": r.get("speedup_vs_research"),
            "peak_extra_bytes": r.get("peak_extra_bytes"), "memory_label": r.get("memory_label"),
            "memory_ratio_vs_research": r.get("memory_ratio_vs_research"),
        })
    preset = record.get("preset", {})
    return {"preset": preset.get("name"), "geometry": preset, "dtype": record.get("dtype"),
            "device": record.get("device"), "gpu": (record.get("machine") or {}).get("gpu"),
            "gemm_tflop_s": round(gemm_rate / 1e12, 2) if gemm_rate else None,
            "rehearsal": record.get("device") != "cuda", "rows": out}


def collect(outdir: Path) -> dict:
    steps = read_jsonl(outdir / "steps.jsonl")
    meta = read_json(outdir / "check.json") or {}
    bench = [bench_rows(r) for r in read_jsonl(outdir / "bench.jsonl")]
    skipped = [{"what": s["name"], "why": s.get("reason")} for s in steps if s.get("status") == "skipped"]
    skipped += [{"what": f"bench {b['preset']}: {r['impl']} {r['mode']}", "why": r["reason"]}
                for b in bench for r in b["rows"] if r["status"] != "ok"]
    families = read_json(outdir / "family_steps.json")
    skipped += [{"what": f"family step {m.get('model')}", "why": m.get("reason")}
                for m in (families or {}).get("models", []) if m.get("status") == "skipped"]
    problems = [s for s in steps if s.get("status") in ("failed", "timeout")]
    dry = None
    try:
        dry = (outdir / "dry_run.txt").read_text()
    except OSError:
        pass
    return {"schema": SCHEMA, **meta, "env": read_json(outdir / "env.json"), "steps": steps,
            "pytest_gpu": pytest_results(outdir / "pytest-gpu.xml"), "bench": bench,
            "guided_step": read_json(outdir / "guided_step.json"), "family_steps": families, "dry_run": dry,
            "skipped": skipped,
            "problems": [{"step": s["name"], "status": s["status"], "reason": s.get("reason")} for s in problems]}


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def family_markdown(fs: dict | None) -> list[str]:
    """The families' real-size guided steps: one row per model, measured or skipped with its reason."""
    lines = ["", "## Real-size guided steps of the families (random weights)", ""]
    if fs is None:
        return lines + ["not run (see the steps table)"]
    lines += [f"{fs.get('device')}; {fs.get('note')}; {fs.get('gemm_dtype', 'bf16')} GEMM "
              f"{_num(fs.get('gemm_tflop_s'))} TFLOP/s; "
              f"{_num(fs.get('time_limit_s'), '{:.0f}')} s given, {_num(fs.get('elapsed_s'), '{:.0f}')} s used", ""]
    rows = []
    for m in fs.get("models", []):
        pred = m.get("predicted") or {}
        size = f"{m.get('frames')} x {m.get('height')}x{m.get('width')}"
        if m.get("rehearsal_size"):
            r = m["rehearsal_size"]
            size += f" (ran: tiny, {r['frames']} x {r['height']}x{r['width']})"
        rows.append([m.get("model", "-"), size, str(m.get("tokens", "-")), m.get("status", "-"),
                     _num(m.get("build_s"), "{:.1f} s"), _num(m.get("reference_s"), "{:.3f} s"),
                     _num(m.get("guided_step_s"), "{:.3f} s"), _num(m.get("denoise_forward_s"), "{:.3f} s"),
                     _gib(m.get("peak_bytes")), _gib(m.get("predicted_peak_bytes")),
                     _num(pred.get("total_s"), "{:.0f} s"), (m.get("reason") or "").replace("|", "/")])
    return lines + _table(["model", "frames x size", "video tokens", "status", "build", "reference",
                           "guided step (1 iteration)", "denoising forward", "peak", "predicted peak",
                           "predicted time", "note"], rows)


def markdown(s: dict) -> str:
    env = s.get("env") or {}
    lines = [f"# Device check{' (rehearsal, no GPU)' if s.get('rehearsal') else ''}", ""]
    if s.get("rehearsal"):
        lines += ["This is a rehearsal on a machine without a GPU: no figure below was measured on a GPU. "
                  "Steps marked rehearsal ran at toy sizes on the CPU only to exercise the code paths.", ""]
    dev = env.get("device") or {}
    lines += [f"- device: {dev.get('name') or 'none (no CUDA device)'}"
              + (f", {dev.get('total_memory_bytes', 0) / 2**30:.1f} GiB, compute capability {dev.get('capability')}"
                 if dev.get("name") else ""),
              f"- driver: {env.get('driver') or '-'}; nvcc: {env.get('nvcc') or 'not found'}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
              f"- commit: {s.get('commit') or '-'}; started {s.get('started', '-')}, "
              f"finished {s.get('finished') or '(still running or killed)'}; "
              f"budget {s.get('budget_s', '-')} s, used {_num(s.get('elapsed_s'), '{:.0f}')} s", ""]
    lines += ["## Steps", ""]
    lines += _table(["step", "status", "seconds", "timeout", "note"],
                    [[st["name"], st["status"], _num(st.get("seconds"), "{:.1f}"), _num(st.get("timeout"), "{:.0f}"),
                      (st.get("reason") or "").replace("|", "/")] for st in s.get("steps", [])])
    pt = s.get("pytest_gpu")
    lines += ["", "## pytest -m gpu", ""]
    if pt is None:
        lines.append("no results (the step did not run or wrote no JUnit file)")
    else:
        lines.append(f"{pt['passed']} passed, {pt['failed']} failed, {pt['error']} errors, {pt['skipped']} skipped "
                     f"({pt['seconds']} s)")
        for f in pt["failures"]:
            lines.append(f"- FAILED {f['test']}: {f['message']}")
        for r in pt["skip_reasons"][:8]:
            lines.append(f"- skipped x{r['count']}: {r['reason']}")
    lines += ["", "## Benchmark", ""]
    if not s.get("bench"):
        lines.append("no benchmark record")
    for b in s.get("bench", []):
        g = b["geometry"]
        lines += [f"### {b['preset']}{' (rehearsal)' if b['rehearsal'] else ''}: {b['dtype']} on {b['device']}"
                  f" ({b.get('gpu') or 'CPU'}); N={g.get('tokens')}, H={g.get('heads')}, d={g.get('head_dim')}; "
                  f"bare GEMM {_num(b['gemm_tflop_s'])} TFLOP/s", ""]
        lines += _table(["impl", "mode", "median ms", "TFLOP/s", "share of GEMM rate", "vs research",
                         "peak extra", "note"],
                        [[r["impl"], r["mode"], _num(r["median_ms"], "{:.3f}"), _num(r["tflop_s"]),
                          _pct(r["share_of_gemm"]), _num(r["speedup_vs_research"], "{:.2f}x"),
                          _gib(r["peak_extra_bytes"]) + (" (predicted)" if r["memory_label"] == "predicted" else ""),
                          "" if r["status"] == "ok" else f"{r['status']}: {r['reason']}".replace("|", "/")]
                         for r in b["rows"]])
        lines.append("")
    gs = s.get("guided_step")
    lines += ["## Guided optimisation step", ""]
    if gs is None:
        lines.append("not run (see the steps table)")
    else:
        lines += [f"{gs.get('what')}", ""]
        t = gs.get("timing") or {}
        m = gs.get("memory") or {}
        lines += _table(["figure", "value"], [
            ["AMF backend (auto)", str(gs.get("amf_backend"))],
            ["first iteration (compile, autotune)", _num(t.get("first_iteration_s"), "{:.3f} s")],
            ["iteration, median of measured", _num(t.get("iteration_s"), "{:.3f} s")],
            ["forward to the guidance block", _num(t.get("forward_s"), "{:.3f} s")],
            ["AMF soft forward + backward (loss included)", _num(t.get("amf_s"), "{:.3f} s")],
            ["transformer backward (recomputation included)", _num(t.get("backward_s"), "{:.3f} s")],
            ["optimiser step", _num(t.get("optimizer_s"), "{:.4f} s")],
            ["AMF share of the step", _pct(t.get("amf_share"))],
            ["reference capture + argmax AMF (no grad)", _num(t.get("reference_s"), "{:.3f} s")],
            ["measured peak allocated", _gib(m.get("measured_peak_bytes"))],
            ["measured peak reserved", _gib(m.get("measured_reserved_bytes"))],
            ["measured weights", _gib(m.get("measured_weights_bytes"))],
            ["--dry-run prediction (with the VAE)", _gib(m.get("predicted_total_bytes"))],
            ["prediction without the VAE (not loaded here)", _gib(m.get("predicted_without_vae_bytes"))],
            ["measured / predicted without VAE", _num(m.get("measured_over_predicted"), "{:.3f}")],
        ])
        for name, v in (gs.get("amf_by_backend") or {}).items():
            lines.append(f"- AMF soft fwd+bwd with backend {name}: "
                         + (f"{v['median_s'] * 1e3:.2f} ms" if v.get("median_s") is not None else v.get("reason", "-")))
        for note in gs.get("notes", []):
            lines.append(f"- {note}")
    lines += family_markdown(s.get("family_steps"))
    if s.get("dry_run"):
        lines += ["", "## ditflow-fast transfer --dry-run", "", "```", s["dry_run"].rstrip(), "```"]
    lines += ["", "## Skipped, and why", ""]
    lines += [f"- {x['what']}: {x['why']}" for x in s.get("skipped", [])] or ["nothing"]
    lines += [f"- {n}" for n in s.get("notes", [])]
    if s.get("problems"):
        lines += ["", "## Problems", ""] + [f"- {p['step']}: {p['status']}: {p['reason']}" for p in s["problems"]]
    return "\n".join(lines) + "\n"


def write(outdir: Path) -> dict:
    """Collect OUTDIR and (re)write summary.json and summary.md there, each by an atomic rename."""
    outdir = Path(outdir)
    s = collect(outdir)
    atomic = _atomic()
    for name, text in (("summary.json", json.dumps(s, indent=1, default=str) + "\n"), ("summary.md", markdown(s))):
        atomic.write_text(outdir / name, text)
    return s


if __name__ == "__main__":
    write(Path(sys.argv[1]))
