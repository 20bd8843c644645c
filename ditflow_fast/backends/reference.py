"""The AMF written literally, materialising every score: the oracle the fast backends answer to.

Registers the ``reference`` backend (:func:`amf_reference` behind the dispatcher; never picked by
``auto``). Two procedures live here:

* :func:`amf_reference` is ``docs/amf.md`` step by step, in float64. It keeps the full
  ``[B, H, N, N]`` logits, so it is for tests and small shapes only.
* :func:`research_procedure` redoes what the DiTFlow research code does, in the caller's dtype
  (per-head scores, head mean, per-frame softmax, one displacement per frame pair), so the
  benchmark's "research" row costs what the original costs. Its output layout is the research
  code's ``[F*F, h*w, 2]`` for the last batch element.
"""

from __future__ import annotations

import math

import torch

from .._problem import FLOAT_DTYPES
from ..dispatch import Backend, register
from ..geometry import patch_coords
from .ranking import AUTO_RANK


def amf_reference(q, k, *, frames, height, width, temperature=2.0, mode="soft", text_tokens=0):
    """Literal AMF in float64: ``[B, F, F, h*w, 2]`` from ``[B, H, T, d]`` q and k.

    Differentiable in soft mode (plain autograd through the float64 graph).
    """
    b, heads, _, d = q.shape
    f, hw = frames, height * width
    qv = q[:, :, text_tokens:].double()
    kv = k[:, :, text_tokens:].double()
    per_head = qv @ kv.transpose(-1, -2) / math.sqrt(d)  # [B, H, N, N]
    scores = per_head.mean(dim=1).reshape(b, f * hw, f, hw)  # [B, m, j, n]
    pos = patch_coords(height, width, device=q.device, dtype=torch.float64)
    if mode == "argmax":
        target = pos[scores.argmax(dim=-1)]  # [B, m, j, 2]
    else:
        target = torch.softmax(temperature * scores, dim=-1) @ pos
    own = pos.repeat(f, 1)[None, :, None, :]  # pos(m) for every query token
    disp = (target - own).reshape(b, f, hw, f, 2)
    return disp.permute(0, 1, 3, 2, 4)


def research_bytes(heads: int, frames: int, height: int, width: int, elem_size: int, backward: bool = False,
                   device: str = "cuda") -> int:
    """Predicted peak extra bytes of :func:`research_procedure` (its live score tensors).

    Two ``[H, N, N]`` tensors are alive at once (the per-head scores and their scaled copy, as in
    the original's ``matmul(...) / sqrt(d)``), plus the head mean, its scaled copy and the softmax,
    each ``[N, N]``; autograd through it keeps about nine more ``N x N`` buffers. The
    ``[h*w, h*w]`` pair temporaries are small next to them. Measured: 675 MB against 690 MB
    predicted at 48 x 64 heads, N = 1,320, float32. On the CPU the head mean of bf16/fp16 scores
    takes one more ``[H, N, N]`` copy while both are alive (measured: 3.01 of them in bf16, 1.98 in
    float32), so there the forward's peak is that: 519 MB measured at ``cpu-5b`` in bf16, 19.17 GB
    at ``cogvideox-5b-f6``, against 512 MB and 19.3 GB predicted (``docs/runs/bench_bf16_tiles/``).
    """
    n = frames * height * width
    live = 2 * heads + (12 if backward else 3)
    if device == "cpu" and elem_size < 4:
        live = max(live, 3 * heads + 3)
    return live * n * n * elem_size


def research_procedure(q, k, *, h=30, w=45, temp=5.0, nframes=6, argmax=False, text_tokens=226):
    """The research code's AMF procedure, re-implemented: ``[F*F, h*w, 2]`` for ``q[-1]``.

    Scores are formed per head in the input dtype and averaged, softmax runs per target frame in
    the input dtype, and each of the ``F*F`` frame pairs is reduced against relative-coordinate
    matrices, as the original does. Soft mode returns the input dtype; argmax mode returns the default
    float dtype (float32), as the original does: it divides its integer displacements by the number of
    averaged score maps (1), and true division of an integer tensor gives a float one.
    """
    qv = q[-1, :, text_tokens:]
    kv = k[-1, :, text_tokens:]
    scale = torch.sqrt(torch.tensor(q.shape[-1], dtype=q.dtype, device=q.device))
    mean_scores = (qv @ kv.transpose(-1, -2) / scale).mean(dim=0)  # [N, N] in the input dtype
    hw = h * w
    probs = torch.softmax(mean_scores.reshape(nframes * hw, nframes, hw) * temp, dim=-1)
    pos = patch_coords(h, w, device=q.device, dtype=torch.long)
    flows = []
    for i in range(nframes):
        for j in range(nframes):
            block = probs[i * hw:(i + 1) * hw, j]  # [hw queries, hw keys of frame j]
            if argmax:
                flows.append(pos[block.argmax(dim=-1)] - pos)
            else:
                rel = (pos[None, :, :] - pos[:, None, :]).to(block.dtype)  # [s, n, 2]: pos(n) - pos(s)
                flows.append(torch.stack([(rel[..., c] * block).sum(dim=1) for c in range(2)], dim=-1))
    flows = torch.stack(flows, dim=0)
    return flows / 1 if argmax else flows  # the original's `total_predicted_flows / A_all.shape[0]`


def _run_reference(p):
    out = amf_reference(
        p.q, p.k, frames=p.frames, height=p.height, width=p.width,
        temperature=p.temperature, mode=p.mode, text_tokens=p.text_tokens,
    )
    return out.to(p.out_dtype)


register(Backend(
    name="reference",
    summary="literal definition in float64, materialises [B, H, N, N] scores (test oracle)",
    run=_run_reference,
    devices=("cpu", "cuda"),
    dtypes=FLOAT_DTYPES,
    auto_rank=AUTO_RANK["reference"],
    double_backward=True,  # plain autograd through float64 torch ops
))
