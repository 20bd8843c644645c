"""``amf.html``: one self-contained page (data inline, no network, opens from disk) to look at an AMF.

A dropdown picks the first frame ``i``, a slider the second frame ``j``; the field of the pair is drawn
with the colour wheel of :mod:`.colour` (the same table and formula, in JavaScript) blended over
frame ``i``, with a legend wheel, optional arrows on a coarse grid and the pair's mean displacement in
numbers. With two fields (reference and generated) they are drawn side by side with the per-patch
error of the pair and a table of the mean error of every pair (click a cell to show that pair).

The data are a JSON object in a ``<script type="application/json">`` element: frames as PNG/JPEG data
URIs (one per latent frame), each field as base64 of its little-endian float32 ``[F, F, h*w, 2]``.
``window.ditflowViewer`` exposes the state and the drawing functions (for tests and the console);
``document.body.dataset.ready`` is ``"1"`` once the first pair is drawn.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from .colour import RAMPS
from .fields import pair_errors


def _data_uri(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(frame, np.uint8))
    if frame.shape[0] * frame.shape[1] > 128 * 128:
        im.save(buf, format="JPEG", quality=88)
        kind = "jpeg"
    else:
        im.save(buf, format="PNG")
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _f32(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode("ascii")


def page_data(fields, info: dict, *, scale: float, title: str) -> dict:
    f = int(fields[0][1].shape[0])
    data = dict(title=title, F=f, h=int(info["height"]), w=int(info["width"]), scale=float(scale),
                ramps=list(RAMPS), names=[n for n, _, _ in fields],
                frames=[[_data_uri(fr) for fr in frames] for _, _, frames in fields],
                amf=[_f32(a) for _, a, _ in fields],
                info={k: v for k, v in info.items() if isinstance(v, (str, int, float, bool)) or v is None})
    if len(fields) == 2:
        data["errors"] = pair_errors(fields[0][1], fields[1][1]).astype(float).round(4).ravel().tolist()
    return data


def render_page(fields, info: dict, *, scale: float, title: str = "Attention Motion Flow") -> str:
    data = json.dumps(page_data(fields, info, scale=scale, title=title), separators=(",", ":"))
    # no "<" at all in the script element (JSON.parse reads \u003c back): "</script" would close it, and "<!--<script"
    # would keep the real "</script>" from closing it (the HTML parser's double-escaped state)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _TEMPLATE.replace("@@TITLE@@", html.escape(title)).replace("@@DATA@@", data)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>@@TITLE@@</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; }
.prov { color: #666; font-size: 12px; margin-bottom: 10px; }
.controls { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 12px; }
.panels { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-weight: 600; margin: 2px 0; }
canvas.view { border: 1px solid #bbb; display: block; }
.mean { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre; }
table.err { border-collapse: collapse; font-size: 10px; font-family: ui-monospace, monospace; }
table.err td, table.err th { border: 1px solid #ddd; padding: 1px 3px; text-align: right; cursor: pointer; }
table.err td.sel { outline: 2px solid #000; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="prov" id="prov"></div>
<div class="controls">
  <label>first frame <select id="first"></select></label>
  <label>second frame <input type="range" id="second" min="0" max="0" step="1" value="0">
    <span id="second-label"></span></label>
  <label><input type="checkbox" id="arrows"> arrows</label>
  <label>colour opacity <input type="range" id="opacity" min="0" max="100" value="65"></label>
</div>
<div class="panels" id="panels">
  <figure><figcaption>legend</figcaption><canvas id="legend" width="120" height="120"></canvas>
    <div class="mean" id="legend-text"></div></figure>
</div>
<script type="application/json" id="ditflow-data">@@DATA@@</script>
<script>
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("ditflow-data").textContent);
  const F = D.F, h = D.h, w = D.w, hw = h * w;
  const $ = (id) => document.getElementById(id);

  function wheel() {
    const [ry, yg, gc, cb, bm, mr] = D.ramps, c = [];
    for (let i = 0; i < ry; i++) c.push([1, i / ry, 0]);
    for (let i = 0; i < yg; i++) c.push([1 - i / yg, 1, 0]);
    for (let i = 0; i < gc; i++) c.push([0, 1, i / gc]);
    for (let i = 0; i < cb; i++) c.push([0, 1 - i / cb, 1]);
    for (let i = 0; i < bm; i++) c.push([i / bm, 0, 1]);
    for (let i = 0; i < mr; i++) c.push([1, 0, 1 - i / mr]);
    return c;
  }
  const CW = wheel();
  function flowColour(dx, dy, scale) {  // the same formula as ditflow_fast/viewer/colour.py
    const n = CW.length, rad = Math.sqrt(dx * dx + dy * dy) / (scale > 0 ? scale : 1);
    const a = Math.atan2(-dy, -dx) / Math.PI, fk = (a + 1) / 2 * (n - 1), fl = Math.floor(fk);
    const k0 = ((fl % n) + n) % n, k1 = (k0 + 1) % n, f = fk - fl, out = [0, 0, 0];
    for (let c = 0; c < 3; c++) {
      let v = (1 - f) * CW[k0][c] + f * CW[k1][c];
      v = rad <= 1 ? 1 - rad * (1 - v) : v * 0.75;
      out[c] = Math.min(255, Math.max(0, Math.floor(255 * v + 0.5)));
    }
    return out;
  }
  function f32(b64) {
    const bin = atob(b64), u = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    return new Float32Array(u.buffer);
  }
  const fields = D.amf.map(f32);
  const at = (field, i, j, s) => { const o = ((i * F + j) * hw + s) * 2; return [field[o], field[o + 1]]; };
  function pairMean(k, i, j) {
    let sx = 0, sy = 0, sm = 0;
    for (let s = 0; s < hw; s++) {
      const [dx, dy] = at(fields[k], i, j, s); sx += dx; sy += dy; sm += Math.hypot(dx, dy);
    }
    return {dx: sx / hw, dy: sy / hw, mag: sm / hw};
  }
  function pairError(i, j) {
    let e = 0;
    for (let s = 0; s < hw; s++) {
      const a = at(fields[0], i, j, s), b = at(fields[1], i, j, s); e += Math.hypot(a[0] - b[0], a[1] - b[1]);
    }
    return e / hw;
  }

  $("title").textContent = D.title;
  $("prov").textContent = Object.entries(D.info).map(([k, v]) => k + ": " + v).join("  ·  ");
  const sel = $("first"), slider = $("second");
  for (let i = 0; i < F; i++) {
    const o = document.createElement("option"); o.value = String(i); o.textContent = "frame " + i; sel.appendChild(o);
  }
  slider.max = String(F - 1);
  slider.value = String(Math.min(1, F - 1));

  const images = D.frames.map((list) => list.map((src) => { const im = new Image(); im.src = src; return im; }));
  const W0 = images[0][0];
  const panels = $("panels"), views = [];
  function addPanel(name, id) {
    const fig = document.createElement("figure"), cap = document.createElement("figcaption");
    const cv = document.createElement("canvas"), mean = document.createElement("div");
    cap.textContent = name; cv.className = "view"; cv.id = id; mean.className = "mean"; mean.id = id + "-mean";
    fig.appendChild(cap); fig.appendChild(cv); fig.appendChild(mean); panels.insertBefore(fig, panels.lastElementChild);
    views.push({cv: cv, mean: mean});
    return cv;
  }
  D.names.forEach((n, k) => addPanel(n, "view" + k));
  const two = D.names.length === 2;
  if (two) addPanel("error |reference - generated| (red: " + D.scale.toFixed(2) + " patches)", "view-error");

  let table = null;
  if (two) {
    const fig = document.createElement("figure"), cap = document.createElement("figcaption");
    cap.textContent = "mean error per pair (patches), rows i, columns j";
    table = document.createElement("table"); table.className = "err"; table.id = "error-table";
    const head = document.createElement("tr"); head.appendChild(document.createElement("th"));
    for (let j = 0; j < F; j++) { const th = document.createElement("th"); th.textContent = j; head.appendChild(th); }
    table.appendChild(head);
    const emax = Math.max(1e-6, ...D.errors);
    for (let i = 0; i < F; i++) {
      const tr = document.createElement("tr"), th = document.createElement("th");
      th.textContent = i; tr.appendChild(th);
      for (let j = 0; j < F; j++) {
        const td = document.createElement("td"), e = D.errors[i * F + j];
        td.textContent = e.toFixed(2); td.dataset.i = i; td.dataset.j = j;
        td.style.background = "rgba(220,40,30," + (0.8 * e / emax).toFixed(3) + ")";
        td.addEventListener("click", () => { sel.value = String(i); slider.value = String(j); draw(); });
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    fig.appendChild(cap); fig.appendChild(table); panels.appendChild(fig);
  }

  function size() {
    const iw = W0.naturalWidth || w, ih = W0.naturalHeight || h, target = Math.max(256, Math.min(420, iw));
    return [Math.round(target), Math.round(target * ih / iw)];
  }
  const off = document.createElement("canvas"); off.width = w; off.height = h;
  const offCtx = off.getContext("2d");
  function overlay(colourAt) {
    const img = offCtx.createImageData(w, h);
    for (let s = 0; s < hw; s++) {
      const c = colourAt(s); img.data.set([c[0], c[1], c[2], c.length > 3 ? c[3] : 255], s * 4);
    }
    offCtx.putImageData(img, 0, 0);
    return off;
  }
  function drawFrame(ctx, im, W, H, grey) {
    ctx.imageSmoothingEnabled = (im.naturalWidth || 0) >= W / 2;
    ctx.filter = grey ? "grayscale(1)" : "none";
    ctx.drawImage(im, 0, 0, W, H);
    ctx.filter = "none";
  }
  function arrows(ctx, field, i, j, W, H) {
    const step = Math.max(1, Math.round(Math.max(h, w) / 12)), sx = W / w, sy = H / h;
    ctx.lineWidth = 1.5;
    for (let y = Math.floor(step / 2); y < h; y += step) for (let x = Math.floor(step / 2); x < w; x += step) {
      const [dx, dy] = at(field, i, j, y * w + x), x0 = (x + 0.5) * sx, y0 = (y + 0.5) * sy;
      const x1 = x0 + dx * sx, y1 = y0 + dy * sy;
      for (const [col, lw] of [["#fff", 3.5], ["#000", 1.5]]) {
        ctx.strokeStyle = col; ctx.lineWidth = lw; ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1);
        const ang = Math.atan2(y1 - y0, x1 - x0), len = Math.hypot(x1 - x0, y1 - y0);
        if (len > 2) {
          const hl = Math.min(6, len / 2);
          ctx.moveTo(x1, y1); ctx.lineTo(x1 - hl * Math.cos(ang - 0.5), y1 - hl * Math.sin(ang - 0.5));
          ctx.moveTo(x1, y1); ctx.lineTo(x1 - hl * Math.cos(ang + 0.5), y1 - hl * Math.sin(ang + 0.5));
        }
        ctx.stroke();
      }
      ctx.fillStyle = "#000"; ctx.fillRect(x0 - 1, y0 - 1, 2, 2);
    }
  }
  function drawLegend() {
    const cv = $("legend"), ctx = cv.getContext("2d"), n = cv.width, c = (n - 1) / 2, img = ctx.createImageData(n, n);
    for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) {
      const dx = (x - c) / c, dy = (y - c) / c, inside = dx * dx + dy * dy <= 1, col = flowColour(dx, dy, 1);
      img.data.set([col[0], col[1], col[2], inside ? 255 : 0], (y * n + x) * 4);
    }
    ctx.putImageData(img, 0, 0);
    $("legend-text").textContent = "hue: direction (y down)\nright red, down yellow,\nleft cyan, up blue\nrim: " +
      D.scale.toFixed(2) + " patches";
  }
  const state = {i: 0, j: Math.min(1, F - 1)};
  function draw() {
    const i = Number(sel.value), j = Number(slider.value), showArrows = $("arrows").checked;
    const alpha = Number($("opacity").value) / 100, [W, H] = size();
    state.i = i; state.j = j;
    $("second-label").textContent = "frame " + j;
    fields.forEach((field, k) => {
      const cv = views[k].cv, ctx = cv.getContext("2d");
      cv.width = W; cv.height = H;
      drawFrame(ctx, images[k][i], W, H, false);
      ctx.globalAlpha = alpha; ctx.imageSmoothingEnabled = false;
      const colour = (s) => { const [dx, dy] = at(field, i, j, s); return flowColour(dx, dy, D.scale); };
      ctx.drawImage(overlay(colour), 0, 0, W, H);
      ctx.globalAlpha = 1;
      if (showArrows) arrows(ctx, field, i, j, W, H);
      const m = pairMean(k, i, j), px = W0.naturalWidth / w;
      views[k].mean.textContent = "pair " + i + " -> " + j + ": mean dx " + m.dx.toFixed(3) + ", mean dy " +
        m.dy.toFixed(3) + " patches\nmean |D| " + m.mag.toFixed(3) + " patches (" + (m.mag * px).toFixed(2) +
        " px of the frame)";
    });
    if (two) {
      const cv = views[2].cv, ctx = cv.getContext("2d");
      cv.width = W; cv.height = H;
      drawFrame(ctx, images[0][i], W, H, true);
      ctx.globalAlpha = Math.max(alpha, 0.2); ctx.imageSmoothingEnabled = false;
      ctx.drawImage(overlay((s) => {
        const a = at(fields[0], i, j, s), b = at(fields[1], i, j, s);
        const e = Math.min(1, Math.hypot(a[0] - b[0], a[1] - b[1]) / D.scale);
        return [255, Math.round(255 * (1 - e)), Math.round(255 * (1 - e)), 255];
      }), 0, 0, W, H);
      ctx.globalAlpha = 1;
      views[2].mean.textContent = "pair " + i + " -> " + j + ": mean error " + pairError(i, j).toFixed(3) + " patches";
      table.querySelectorAll("td").forEach((td) =>
        td.classList.toggle("sel", Number(td.dataset.i) === i && Number(td.dataset.j) === j));
    }
  }
  sel.addEventListener("change", draw);
  slider.addEventListener("input", draw);
  slider.addEventListener("change", draw);
  $("arrows").addEventListener("change", draw);
  $("opacity").addEventListener("input", draw);
  window.ditflowViewer = {data: D, state: state, draw: draw, flowColour: flowColour, pairMean: pairMean,
    fields: fields};
  Promise.all(images.flat().map((im) => im.decode ? im.decode() : Promise.resolve())).then(() => {
    drawLegend(); draw(); document.body.dataset.ready = "1";
  }, (err) => { document.body.dataset.ready = "error"; console.error("ditflow viewer: a frame did not load", err); });
})();
</script>
</body>
</html>
"""
