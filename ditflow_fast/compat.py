"""Drop-in replacement for the DiTFlow research code's ``compute_motion_flow``.

Change ``from guidance_utils.motion_flow_utils import compute_motion_flow`` to
``from ditflow_fast.compat import compute_motion_flow``: same arguments, same
``[F*F, h*w, 2]`` layout with pair index ``i*F + j``, computed without materialising the scores.
Differences: the result is float32 (the original returns the input dtype in soft mode and
integers in argmax mode), and scores are accumulated in float32 rather than the input dtype.
"""

from __future__ import annotations

from .api import compute_amf

RESEARCH_TEXT_TOKENS = 226  # CogVideoX's text prefix, hard-coded by the research code


def compute_motion_flow(q, k, h=30, w=45, temp=5, nframes=6, argmax=False):
    """AMF of the last batch element of ``q, k`` (``[B, H, 226 + N, d]``) as ``[F*F, h*w, 2]``."""
    out = compute_amf(
        q[-1], k[-1], frames=nframes, height=h, width=w, temperature=temp,
        mode="argmax" if argmax else "soft", text_tokens=RESEARCH_TEXT_TOKENS,
    )
    return out.reshape(nframes * nframes, h * w, 2)
