"""An SVG chart of a benchmark record: per mode, each row's time as a ratio to the bare GEMM of the same run.

Plain SVG text (no plotting library): one panel per mode, a bar per row that ran, the GEMM at 1.0x as a dashed
line, rows that did not run named with why. The bar is the paired ratio where the record has it (the GEMM called
again before each timed call: the steadier ratio on a shared machine), else the medians' ratio; the legend says
which.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from .spec import MODES

_W, _LABEL, _VALUE, _BAR_H, _GAP, _PAD = 760, 150, 150, 18, 6, 14
_COLOURS = {"cpu": "#1f6fb4", "torch": "#7f7f7f", "research": "#b44b1f"}  # the package's own rows stand out
_OTHER = "#a7a7a7"
_MODE_TITLE = {"argmax": "argmax", "soft": "soft", "soft_fwd_bwd": "soft forward + backward"}


def _ratio(row: dict) -> tuple[float | None, bool]:
    """The row's ratio to the GEMM and whether it is the paired one."""
    if row.get("x_floor_paired"):
        return row["x_floor_paired"], True
    return row.get("x_floor"), False


def _seconds(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _not_run(row: dict) -> str:
    if row["status"] == "wrong":
        return "WRONG: disagreed with the float64 reference, not timed"
    if row["status"] == "predicted":
        gb = (row.get("predicted_bytes") or 0) / 1e9
        return f"not run: predicted peak {gb:.1f} GB over the fit limit"
    return "not run"


def chart_svg(record: dict) -> str:
    """The chart of ``record`` (one line of a results file) as an SVG document."""
    panels = []
    for mode in MODES:
        rows = [r for r in record["rows"] if r["mode"] == mode and r["status"] != "skipped"]
        if rows:
            panels.append((mode, rows))
    if not panels:
        raise ValueError("the record has no AMF rows that ran or were refused: nothing to chart")
    ratios = [_ratio(r) for _, rows in panels for r in rows if r["status"] == "ok"]
    top = max([1.0, *(v for v, _ in ratios if v)]) * 1.08
    scale = (_W - _LABEL - _VALUE - 2 * _PAD) / top
    x0 = _PAD + _LABEL
    p = record["preset"]
    machine = record["machine"]["gpu"] or f"{record['machine']['cpu']}, {record['machine']['cores']} cores"
    commit = (record["git"].get("commit") or "unknown")[:10] + (" (dirty)" if record["git"].get("dirty") else "")
    layout = ", bthd layout" if record.get("settings", {}).get("layout") == "bthd" else ""
    title = (f"{p['name']} (N = {p['tokens']:,}), {record['dtype']}{layout} on {record['device']}: {machine}; "
             f"commit {commit}")
    paired = any(is_paired for _, is_paired in ratios)
    legend = ("time / the bare GEMM's in the same run, " + ("paired (the GEMM timed just before each call)"
              if paired else "medians") + "; shorter is faster; the dashed line is the GEMM")
    gemm = x0 + scale
    out, y = [], 70
    for mode, rows in panels:
        out.append(f'<text x="{_PAD}" y="{y}" font-weight="bold">{escape(_MODE_TITLE[mode])}</text>')
        out.append(f'<text x="{gemm:.1f}" y="{y}" text-anchor="middle" fill="#444">GEMM</text>')
        y += 10
        first, behind = y, len(out)
        for r in rows:
            value, _ = _ratio(r)
            mid = y + _BAR_H / 2 + 4
            out.append(f'<text x="{x0 - 6}" y="{mid}" text-anchor="end">{escape(r["impl"])}</text>')
            if r["status"] == "ok" and value is not None and math.isfinite(value):
                width = max(1.0, value * scale)
                colour = _COLOURS.get(r["impl"], _OTHER)
                out.append(f'<rect x="{x0}" y="{y}" width="{width:.1f}" height="{_BAR_H}" fill="{colour}"/>')
                text = f"{value:.2f}x ({_seconds(r['median_s'])})"
                out.append(f'<text x="{x0 + width + 5:.1f}" y="{mid}">{escape(text)}</text>')
            else:
                colour = "#c0392b" if r["status"] == "wrong" else "#555"
                out.append(f'<text x="{x0 + 5}" y="{mid}" fill="{colour}">{escape(_not_run(r))}</text>')
            y += _BAR_H + _GAP
        out.insert(behind, f'<line x1="{gemm:.1f}" y1="{first - 3}" x2="{gemm:.1f}" y2="{y - _GAP + 3}" '
                           'stroke="#000" stroke-dasharray="4 3"/>')
        y += 18
    height = y + 6
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
            f'viewBox="0 0 {_W} {height}" font-family="sans-serif" font-size="12">',
            # labels keep a white outline, so a bar's value stays legible where it crosses the GEMM line
            '<style>text { stroke: #fff; stroke-width: 3px; paint-order: stroke; }</style>',
            f'<rect width="{_W}" height="{height}" fill="#fff"/>',
            f'<text x="{_PAD}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
            f'<text x="{_PAD}" y="38" fill="#444">{escape(legend)}</text>']
    return "\n".join([*head, *out, "</svg>", ""])
