"""Drop-in replacement for the DiTFlow research code's ``compute_motion_flow``.

Change ``from guidance_utils.motion_flow_utils import compute_motion_flow`` to
``from ditflow_fast.compat import compute_motion_flow``: same arguments and defaults (``h=30, w=45,
temp=5, nframes=6``: six latent frames, 24 video frames, as the research code assumes), same
``[F*F, h*w, 2]`` layout with pair index ``i*F + j``, computed without materialising the scores.
Differences: the result is float32 (float64 for float64 input; the original returns the input
dtype in soft mode and float32 in argmax mode), scores are accumulated in float32 rather than the
input dtype, with autocast off inside (so the same under ``torch.autocast`` as outside), and a
token count that does not match ``226 + nframes*h*w`` is an error naming ``nframes``, ``h`` and
``w`` instead of a reshape failure or a silently wrong flow.
"""

from __future__ import annotations

import torch

from ._problem import as_int
from .api import compute_amf

RESEARCH_TEXT_TOKENS = 226  # CogVideoX's text prefix, hard-coded by the research code


def compute_motion_flow(q, k, h=30, w=45, temp=5, nframes=6, argmax=False):
    """AMF of the last batch element of ``q, k`` (``[B, H, 226 + N, d]``) as ``[F*F, h*w, 2]``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        got = f"shape {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be [B, H, T, d] (CogVideoX's attention layout), got {got}")
    nframes, h, w = as_int("nframes", nframes), as_int("h", h), as_int("w", w)
    t = q.shape[-2]
    if t != RESEARCH_TEXT_TOKENS + nframes * h * w:
        raise ValueError(
            f"q has T={t} tokens but 226 + nframes*h*w = 226 + {nframes}*{h}*{w} = "
            f"{RESEARCH_TEXT_TOKENS + nframes * h * w}: pass nframes (the latent frames; the research default "
            f"is 6, for 24 video frames), h and w (the patch grid) of this video"
        )
    out = compute_amf(
        q[-1], k[-1], frames=nframes, height=h, width=w, temperature=temp,
        mode="argmax" if argmax else "soft", text_tokens=RESEARCH_TEXT_TOKENS,
    )
    return out.reshape(nframes * nframes, h * w, 2)
