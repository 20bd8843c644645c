"""The reference check of ``ditflow-fast bench`` (``--refcheck``, on by default).

Before a row is timed, its AMF is compared with the float64 reference on the same inputs (the
seeded inputs of :func:`ditflow_fast.bench.spec.make_inputs`), computed by the very call its row in
the registry (:mod:`ditflow_fast.bench.rows`) times; a row that disagrees is marked wrong and not
timed. Soft fwd+bwd rows are also checked on their gradients of ``q`` and ``k`` for the case's fixed
upstream gradient.

Tolerances (:func:`tolerance`):

* backends and peers: ``docs/amf.md`` "Agreement". Soft: relative error ``||D - D_ref|| / ||D_ref||``
  (and of each gradient) at most 1e-5 for float32 inputs, 2e-2 for bfloat16/float16, 1e-10 for
  float64. Argmax: the float64 head-mean score of every chosen key within 1e-4 of its row maximum,
  and the entry equal to the reference wherever the top two scores differ by more than that.
* the research procedure (:func:`ditflow_fast.backends.reference.research_procedure`): it forms the
  per-head scores, their head mean and the softmax *in the input dtype* (no float32
  accumulation), so with unit roundoff ``u`` of the input dtype (2^-8 bf16, 2^-11 fp16, 2^-24
  fp32) its argmax tolerance is ``max(1e-4, 16*u)`` on the same score-gap rule: probabilities
  rounded to the input dtype tie when their logits ``tau*S`` differ by less than about ``u``, and
  the per-head scores (``|q.k|/sqrt(d)`` up to about 5 for unit-normal inputs) carry about
  ``2u`` of their size each through the GEMM and the division. Measured at 48x64 heads,
  2 frames of 15x22, seeded normal inputs: largest gap 2.6e-3 in bf16 (tolerance 6.25e-2),
  1.8e-4 in fp16 (7.8e-3), 0 in fp32 (1e-4). Its soft tolerance is the spec's for the dtype: it
  measured a relative error of 1.7e-3 (bf16), 2.2e-4 (fp16), 7.7e-8 (fp32), gradients 4.9e-3,
  6.3e-4, 2.8e-7.

bfloat16 inputs: the reference is formed from the bf16 values themselves (exact in float64), so the
check measures each row's arithmetic, not the input rounding a bf16 run accepts by choosing bf16. Rows
that accumulate in float32 (every CPU backend, the torch backend and the CPU peers upcast bf16 first)
agree on the soft AMF to float32 rounding (relative error 1e-7 at the smoke preset), and their argmax
on the same 1e-4 score gap as in float32. Their gradients ``dq``, ``dk`` come back in bf16: that one
rounding (at most 2^-8 relative) is their whole error, 1.7e-3 measured, so the float32 tolerance 1e-5
would fail a correct row; the spec's 2e-2 sits 5x above the rounding and leaves room for backwards that
multiply in bf16 (the ``cpu`` backend's, where the CPU has AVX512-BF16: 2.8e-3 at ``cpu-5b``; a GPU
kernel's) while a gradient 5% off still fails (``tests/bench/test_bench_bf16.py``).

The reference: the head-mean logits ``S = Q_cat K_cat^T / (H sqrt(d))`` in float64 (one GEMM of the
heads-concatenated vectors, which docs/amf.md step 1 says the head mean is), then the per-frame
softmax or argmax of :func:`ditflow_fast.backends.reference.amf_reference`, with float64 autograd for the
gradients. It keeps ``[N, N]`` float64, not ``amf_reference``'s ``[B, H, N, N]``; the two agree to
float64 rounding (``tests/bench/test_bench_refcheck.py``).

Size (:func:`check_shape`): the check runs on the preset's own problem when its float64 reference
costs at most :data:`MAX_REFERENCE_FLOPS` (``2*N^2*H*d``) and its memory fits; otherwise on a
reduced problem of the same heads, head size, text prefix, dtype, mode and backend: first 2
frames (keeping cross-frame pairs), then the larger of ``h``, ``w`` halved until it fits. The
record says so (``refcheck.note``: "checked on a reduced problem: F=..., h×w=...").
"""

from __future__ import annotations

import math
import time

import torch

from ..geometry import AMFGeometry, patch_coords
from . import rows
from .memory import fit_limit
from .presets import get_preset
from .spec import RESEARCH, TEMPERATURE, CaseSpec, make_inputs, upstream_grad

# A float64 GEMM of this many FLOPs takes about half a second on the 2-core CPU machine, about what
# one timed call of the CPU-sized default preset (cpu-5b: 10.7 GFLOP, checked at full size) costs.
MAX_REFERENCE_FLOPS = 16e9
MAX_REFERENCE_BYTES = 2 * 2**30
SOFT_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
ARGMAX_SCORE_ATOL = 1e-4


def _unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def tolerance(impl: str, mode: str, dtype: torch.dtype) -> dict:
    """``{"metric", "tol", "source"}`` of a row: the spec's agreement, or the research procedure's own."""
    own = rows.get(impl).tolerance == "input-dtype"
    if mode == "argmax":
        metric = "argmax: largest float64 score gap between the chosen key and its row maximum"
        if own:
            return {"metric": metric, "tol": max(ARGMAX_SCORE_ATOL, 16 * _unit_roundoff(dtype)),
                    "source": "research procedure: max(1e-4, 16*u) of its input dtype (bench/refcheck.py)"}
        return {"metric": metric, "tol": ARGMAX_SCORE_ATOL, "source": "docs/amf.md Agreement"}
    metric = "soft: relative L2 error" + (" of the AMF and of dq, dk" if mode == "soft_fwd_bwd" else "")
    source = ("research procedure: the spec's soft tolerance of its input dtype (bench/refcheck.py)"
              if own else "docs/amf.md Agreement")
    return {"metric": metric, "tol": SOFT_RTOL[dtype], "source": source}


def _reference_cost(preset: str, shape: tuple[int, int, int], dtype: str):
    """(FLOPs, bytes) of the float64 reference on the check problem ``shape`` of ``preset``, plus the largest
    row's own run on it: the research row's predicted ``[H, N, N]`` in the input dtype, with autograd."""
    research = CaseSpec(RESEARCH, "soft_fwd_bwd", preset, dtype).reduced(*shape)
    g = research.geometry
    n = g.tokens
    flops = 2 * n * n * g.heads * g.head_dim
    nbytes = 10 * n * n * 8 + 4 * g.heads * g.sequence * g.head_dim * 8
    return flops, nbytes + rows.get(RESEARCH).predicted_bytes(research)


def check_shape(preset: str, dtype: str = "float32", device: str = "cpu", *, max_flops: float | None = None,
                max_bytes: int | None = None) -> tuple[int, int, int]:
    """``(frames, height, width)`` of the check's problem for ``preset`` (the preset's own when it fits)."""
    g = get_preset(preset).geometry
    max_flops = MAX_REFERENCE_FLOPS if max_flops is None else max_flops
    if max_bytes is None:
        max_bytes = min(MAX_REFERENCE_BYTES, fit_limit(device))

    def fits(f, h, w):
        flops, nbytes = _reference_cost(preset, (f, h, w), dtype)
        return flops <= max_flops and nbytes <= max_bytes

    f, h, w = g.frames, g.height, g.width
    if fits(f, h, w):
        return f, h, w
    f = min(f, 2)
    while not fits(f, h, w) and h * w > 1:
        if w >= h:
            w = (w + 1) // 2
        else:
            h = (h + 1) // 2
    return f, h, w


def shape_note(preset: str, shape: tuple[int, int, int], dtype: str = "float32") -> str | None:
    """The record's sentence for a reduced check; None when the check ran on the preset itself."""
    p = get_preset(preset).geometry
    f, h, w = shape
    if (f, h, w) == (p.frames, p.height, p.width):
        return None
    flops, nbytes = _reference_cost(preset, (p.frames, p.height, p.width), dtype)
    return (f"checked on a reduced problem: F={f}, h×w={h}×{w} (N={f * h * w:,}); the preset (F={p.frames}, "
            f"h×w={p.height}×{p.width}, N={p.tokens:,}) would need a {flops / 1e9:.0f} GFLOP float64 reference and "
            f"{nbytes / 1e9:.1f} GB with the research row's [H, N, N] scores, beyond the check's budget "
            f"({MAX_REFERENCE_FLOPS / 1e9:.0f} GFLOP, {MAX_REFERENCE_BYTES / 2**30:.0f} GiB or 60% of free memory); "
            f"same heads {p.heads}x{p.head_dim}, text prefix, dtype, mode and implementation")


def _to_package_layout(out: torch.Tensor, p: AMFGeometry) -> torch.Tensor:
    """Any case's AMF as ``[F, F, hw, 2]`` (the research code returns ``[F*F, hw, 2]``)."""
    return out.detach().reshape(p.frames, p.frames, p.patches, 2)


class Reference:
    """The float64 reference of one check problem, computed once and shared by every row on it."""

    def __init__(self, spec: CaseSpec):
        self.spec = CaseSpec("reference", "soft", spec.preset, spec.dtype, spec.device, spec.seed, spec.shape)
        self.p = self.spec.geometry
        self.seconds = 0.0
        self._cache: dict = {}

    def _inputs(self):
        if "qk" not in self._cache:
            q, k = make_inputs(self.spec)
            self._cache["qk"] = (q.double(), k.double())
        return self._cache["qk"]

    def _amf(self, q, k, mode):
        p = self.p
        qc = q[0, :, p.text_tokens:].permute(1, 0, 2).reshape(p.tokens, p.concat_dim)
        kc = k[0, :, p.text_tokens:].permute(1, 0, 2).reshape(p.tokens, p.concat_dim)
        s = (qc @ kc.t() / (p.heads * math.sqrt(p.head_dim))).reshape(p.tokens, p.frames, p.patches)
        pos = patch_coords(p.height, p.width, device=q.device, dtype=torch.float64)
        target = pos[s.argmax(dim=-1)] if mode == "argmax" else torch.softmax(TEMPERATURE * s, dim=-1) @ pos
        disp = (target - pos.repeat(p.frames, 1)[:, None, :]).reshape(p.frames, p.patches, p.frames, 2)
        return disp.permute(0, 2, 1, 3), s  # [F, F, hw, 2], [N, F, hw]

    def get(self, what: str):
        """``"scores"`` ``[N, F, hw]``, ``"argmax"`` / ``"soft"`` ``[F, F, hw, 2]``, ``"grads"`` (dq, dk)."""
        if what not in self._cache:
            t0 = time.perf_counter()
            q, k = self._inputs()
            with torch.no_grad():
                if what in ("scores", "argmax"):
                    self._cache["argmax"], self._cache["scores"] = self._amf(q, k, "argmax")
                elif what == "soft":
                    self._cache["soft"] = self._amf(q, k, "soft")[0]
            if what == "grads":
                qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
                with torch.enable_grad():
                    out = self._amf(qg, kg, "soft")[0]
                    out.backward(upstream_grad(self.spec, q.device).double().reshape(out.shape))
                self._cache["grads"] = (qg.grad, kg.grad)
            self.seconds += time.perf_counter() - t0
        return self._cache[what]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    err = (a - b).norm().item()
    den = b.norm().item()
    return err / den if den > 0 else (0.0 if err == 0 else math.inf)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _compare_argmax(out: torch.Tensor, ref: Reference, tol: float) -> dict:
    p = ref.p
    want = ref.get("argmax")
    s = ref.get("scores")  # [N(m), F(j), hw(n)]
    d = out.double()
    result = {"max_abs_err": _max_abs(d, want)}
    own = patch_coords(p.height, p.width, device=d.device, dtype=torch.float64)  # [hw, 2]
    target = d + own[None, None]  # [i, j, s, 2] absolute (x, y) in frame j
    if not bool(torch.isfinite(target).all()) or not torch.equal(target, target.round()):
        return {**result, "err": math.inf, "detail": "displacements are not whole patches"}
    tx, ty = target[..., 0].long(), target[..., 1].long()
    if not bool(((tx >= 0) & (tx < p.width) & (ty >= 0) & (ty < p.height)).all()):
        return {**result, "err": math.inf, "detail": "an argmax target lies outside its frame"}
    idx = (ty * p.width + tx).permute(0, 2, 1).reshape(p.tokens, p.frames)  # [m, j]
    chosen = s.gather(-1, idx[..., None])[..., 0]
    top2 = s.topk(min(2, p.patches), dim=-1).values
    gap = (top2[..., 0] - chosen).max().item()
    best = s.argmax(dim=-1)
    clear = (top2[..., 0] - top2[..., -1] > tol) if p.patches > 1 else torch.ones_like(chosen, dtype=torch.bool)
    wrong_clear = int(((idx != best) & clear).sum())
    result.update(err=gap, differs_where_clear=wrong_clear)
    if wrong_clear:
        result["detail"] = f"{wrong_clear} entries differ from the reference where the top-2 gap exceeds the tolerance"
    return result


def check_case(spec: CaseSpec, refs: dict, *, shape: tuple[int, int, int]) -> dict:
    """The ``refcheck`` entry of one row: run its AMF on the check problem and compare.

    ``refs`` caches the :class:`Reference` of each check problem across rows. A row whose
    implementation refuses the reduced problem is reported ``unchecked`` (with the reason); an
    exception from the row itself propagates (the runner reports the row as an error).
    """
    row = rows.get(spec.impl)
    if not row.computes_amf:
        return {"status": "n/a", "passed": None, "reason": f"{row.summary} produces no AMF"}
    cspec = spec.reduced(*shape)
    p = cspec.geometry
    dtype = cspec.torch_dtype
    tol = tolerance(spec.impl, spec.mode, dtype)
    entry = {"status": None, "passed": None, **tol, "err": None, "max_abs_err": None,
             "problem": {"frames": p.frames, "height": p.height, "width": p.width, "tokens": p.tokens,
                         "reduced": cspec.shape is not None},
             "note": shape_note(spec.preset, shape, spec.dtype)}
    if cspec.shape is not None:
        why = row.skip_reason(cspec)
        if why:
            return {**entry, "status": "unchecked", "reason": f"refuses the reduced problem: {why}"}
    key = (cspec.preset, cspec.shape, cspec.dtype, cspec.device, cspec.seed)
    ref = refs.setdefault(key, Reference(cspec))
    t0 = time.perf_counter()
    forward, q, k = row.forward(cspec)  # the same call the row's timed callable makes
    if spec.mode == "soft_fwd_bwd":
        raw = forward()
        raw.backward(upstream_grad(cspec, q.device).reshape(raw.shape).to(raw.dtype))
        grads = (q.grad.detach(), k.grad.detach())
    else:
        with torch.no_grad():
            raw = forward()
        grads = None
    if cspec.device.startswith("cuda"):
        torch.cuda.synchronize()
    entry["seconds"] = time.perf_counter() - t0
    out = _to_package_layout(raw, p)
    ref_s0 = ref.seconds
    if spec.mode == "argmax":
        entry.update(_compare_argmax(out, ref, tol["tol"]))
    else:
        want = ref.get("soft")
        entry.update(err=_rel(out, want), max_abs_err=_max_abs(out, want))
        if grads is not None:
            dq, dk = ref.get("grads")
            entry["grad_rel_err"] = {"q": _rel(grads[0], dq), "k": _rel(grads[1], dk)}
            entry["grad_max_abs_err"] = {"q": _max_abs(grads[0], dq), "k": _max_abs(grads[1], dk)}
            entry["err"] = max(entry["err"], *entry["grad_rel_err"].values())
    entry["reference_seconds"] = ref.seconds - ref_s0  # 0 when an earlier row computed it
    err = entry["err"]
    passed = bool(err is not None and math.isfinite(err) and err <= tol["tol"] and not entry.get("differs_where_clear"))
    entry.update(status="pass" if passed else "fail", passed=passed)
    return entry


def describe(entry: dict) -> str:
    """One line for the progress output and the table's notes."""
    if entry["status"] in ("n/a", "unchecked"):
        return f"{entry['status']}: {entry['reason']}"
    word = "agrees" if entry["passed"] else "DISAGREES"
    text = (f"{word} with the float64 reference: {entry['metric']} {entry['err']:.3g} "
            f"({'<=' if entry['passed'] else 'above'} tolerance {entry['tol']:.3g}), max abs error "
            f"{entry['max_abs_err']:.3g}")
    if entry.get("detail"):
        text += f"; {entry['detail']}"
    return text
