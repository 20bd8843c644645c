"""Public entry points: :func:`compute_amf` and :func:`choose_backend`."""

from __future__ import annotations

import torch

from . import eager, ops
from .dispatch import Choice


def compute_amf(q, k, *, frames, height, width, temperature=2.0, mode="soft", text_tokens=0, backend="auto",
                layout="bhtd"):
    """Attention Motion Flow of one DiT block, exactly as ``docs/amf.md`` defines it.

    For video tokens ``m`` (query) and ``n`` (key) the head-averaged logits are
    ``S[m, n] = (1/H) sum_h <q_h[m], k_h[n]> / sqrt(d)``. For query ``m = i*h*w + s`` and each
    target frame ``j`` the displacement is

    * ``mode="soft"``: ``sum_{n in j} softmax_n(temperature * S[m, n]) * pos(n) - pos(m)``
      (differentiable with respect to ``q`` and ``k``);
    * ``mode="argmax"``: ``pos(argmax_{n in j} S[m, n]) - pos(m)``, lowest index on ties (no
      gradient; ``temperature`` does not change it).

    Args:
        q, k: ``[B, H, T, d]`` (CogVideoX's attention processor layout) or ``[H, T, d]``; with
            ``layout="bthd"``, ``[B, T, H, d]`` (Wan's) or ``[T, H, d]``. Same shape, dtype and
            device; any strides; float32, float16, bfloat16 or float64. ``T`` must equal
            ``text_tokens + frames*height*width``; video tokens are frame-major, then row-major.
            NaN or inf anywhere in q or k raises ``ValueError``, and so do finite values large
            enough to overflow the float32 scores (``max|q| * max|k| * H * d``, or the logits
            ``temperature * S``, over ``float32 max / 8``; float64's range for float64 input).
        frames, height, width: latent frames ``F`` and patches per frame ``h x w`` (>= 1); any
            integer (``int``, ``numpy.int64``, a 0-dim integer tensor), not a bool.
        temperature: softmax temperature ``tau`` (> 0, finite); DiTFlow uses 2.
        mode: ``"soft"`` or ``"argmax"``.
        text_tokens: number of leading text tokens to skip (226 for CogVideoX, 0 for Wan); an integer >= 0.
        backend: ``"auto"`` or a registered backend name (see ``ditflow-fast info``).
        layout: ``"bhtd"`` (default) or ``"bthd"``: the order of q's and k's dimensions. ``"bthd"``
            is a transposed view, no copy; every backend reads it in place.

    Every backend computes with autocast turned off (forward and backward), so inside
    ``torch.autocast`` the result and the gradients are the same as outside it: scores
    accumulated in float32 from the inputs' own dtype.

    Inside ``torch.compile`` (``fullgraph=True`` included) the call is routed through the
    ``torch.ops.ditflow_fast.amf`` custom op (see :mod:`ditflow_fast.ops`, also for how its errors
    surface there).

    Second derivatives (differentiating a gradient taken with ``create_graph=True``): only
    ``backend="reference"`` has them; every other backend, and the custom op, raises
    ``RuntimeError: double backward is not supported by backend '<name>'`` when asked.

    Returns:
        ``[B, F, F, h*w, 2]`` (``[F, F, h*w, 2]`` for 3-D input) displacements ``(dx, dy)`` in
        patch units, ``out[b, i, j, s]`` for query frame ``i``, target frame ``j``, patch ``s``.
        float32, or float64 for float64 input.
    """
    kw = dict(frames=frames, height=height, width=width, temperature=temperature, mode=mode,
              text_tokens=text_tokens, backend=backend, layout=layout)
    if torch.compiler.is_compiling():
        # Under torch.compile the call goes through the opaque custom op, so the backends' Python
        # loops, launches and the finiteness check never break the graph.
        return ops.amf(q, k, **kw)
    return eager.run(q, k, **kw)


def choose_backend(
    q, k, *, frames, height, width, temperature=2.0, mode="soft", text_tokens=0, backend="auto", layout="bhtd"
) -> Choice:
    """The backend :func:`compute_amf` would use for these arguments, and why others were skipped."""
    return eager.choose(q, k, frames=frames, height=height, width=width, temperature=temperature, mode=mode,
                        text_tokens=text_tokens, backend=backend, layout=layout)[1]
