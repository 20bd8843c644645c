"""Guidance losses: DiTFlow's AMF loss, and the MOFT and SMM baselines.

Each loss has two halves: ``reference(...)`` turns what was captured on the reference video into
a target (no gradient), ``loss(...)`` compares the generation's capture with it. Captures are
``qk = (q, k)`` ``[1, H, F*h*w, d]`` for ``flow`` and block outputs ``[1, F*h*w, D]`` for the others.

- ``flow`` (DiTFlow): reference AMF in argmax mode, generated AMF in soft mode at ``tau``,
  thresholded MSE (:func:`ditflow_fast.amf_loss`).
- ``moft`` (Xiao et al., "Video Diffusion Models are Training-free Motion Interpreter and
  Controller"): motion features are the block features minus their temporal mean (content
  removed), restricted to motion channels. The paper picks the channels by PCA over a set of
  videos with known motion; with a single reference, as DiTFlow's baseline does, the channels are
  the ``prop`` fraction with the largest loadings on the reference's first principal direction.
  Loss: ``1 - cos`` over the motion channels at each position, averaged over positions and frames.
- ``smm`` (Yatim et al., "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
  Transfer"): spatial marginal mean per frame ``[F, D]``; loss ``1 - cos`` between the generated and
  reference frame-to-frame differences ``SMM_i - SMM_j`` over channels, averaged over pairs
  ``i != j``. DiTFlow's research code differs: it anchors the *generated* differences on the
  reference's SMM, and takes the cosine across frames rather than channels (docs/guidance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..api import compute_amf
from ..loss import amf_loss

LOSSES = ("flow", "moft", "smm")


def needs_qk(kind: str) -> bool:
    _check(kind)
    return kind == "flow"


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def _features(out: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
    """``[1, F*h*w, D]`` -> ``[F, h*w, D]`` in float32 (the loss is formed in fp32)."""
    return out.reshape(frames, h * w, out.shape[-1]).float()


def reference(kind: str, capture, *, frames: int, h: int, w: int, prop_motion: float = 0.04,
              backend: str = "auto") -> dict[str, torch.Tensor]:
    """The target the loss compares with, from the reference video's capture (detached)."""
    _check(kind)
    with torch.no_grad():
        if kind == "flow":
            q, k = capture
            return {"amf": compute_amf(q, k, frames=frames, height=h, width=w, mode="argmax", backend=backend)}
        feats = _features(capture, frames, h, w)
        if kind == "smm":
            return {"smm": feats.mean(dim=1)}
        moft = feats - feats.mean(dim=0, keepdim=True)
        flat = moft.reshape(-1, moft.shape[-1])
        vt = torch.linalg.svd(flat - flat.mean(0), full_matrices=False).Vh
        n = max(1, int(prop_motion * flat.shape[-1]))
        channels = vt[0].abs().argsort(descending=True)[:n].sort().values
        return {"moft": moft[..., channels], "channels": channels}


def loss(kind: str, capture, target: dict[str, torch.Tensor], *, frames: int, h: int, w: int,
         temperature: float = 2.0, threshold: bool = True, backend: str = "auto") -> torch.Tensor:
    """Scalar loss between the generation's capture and ``target`` (from :func:`reference`)."""
    _check(kind)
    if kind == "flow":
        q, k = capture
        gen = compute_amf(q, k, frames=frames, height=h, width=w, temperature=temperature, mode="soft",
                          backend=backend)
        return amf_loss(gen, target["amf"], threshold=threshold)
    feats = _features(capture, frames, h, w)
    if kind == "moft":
        moft = (feats - feats.mean(dim=0, keepdim=True))[..., target["channels"]]
        return (1 - F.cosine_similarity(moft, target["moft"], dim=-1)).mean()
    smm = feats.mean(dim=1)  # [F, D]
    if frames < 2:
        return smm.sum() * 0  # no frame pairs: nothing to match
    gen_d = smm[:, None] - smm[None, :]  # [F, F, D]: SMM_i - SMM_j
    ref_d = target["smm"][:, None] - target["smm"][None, :]
    off = ~torch.eye(frames, dtype=torch.bool, device=smm.device)
    return (1 - F.cosine_similarity(gen_d[off], ref_d[off], dim=-1)).mean()
