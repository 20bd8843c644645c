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
- ``flow_window`` (FastVMT-style; Ma et al., "FastVMT: Eliminating Redundancy in Video Motion
  Transfer"): the ``flow`` loss with each query patch's attention restricted to a square window of
  ``window`` x ``window`` patches centred on its own position in the target frame, and to target frames
  at most ``window_frames`` away (both AMFs, reference and generated). With a window of at least
  ``2 * max(h, w) - 1`` and every frame it is the ``flow`` loss (tested). See :func:`window_amf` for how
  it differs from FastVMT's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..api import compute_amf
from ..geometry import patch_coords
from ..loss import amf_loss

LOSSES = ("flow", "flow_window", "moft", "smm")


def needs_qk(kind: str) -> bool:
    _check(kind)
    return kind in ("flow", "flow_window")


def options(cfg) -> dict:
    """The loss's own settings from a :class:`~ditflow_fast.guidance.config.GuidanceConfig` (keyword
    arguments of :func:`loss`): the window of ``flow_window``; nothing for the others."""
    if getattr(cfg, "loss", None) != "flow_window":
        return {}
    return {"window": getattr(cfg, "amf_window", 5), "window_frames": getattr(cfg, "amf_window_frames", 3)}


def window_amf(q: torch.Tensor, k: torch.Tensor, *, frames: int, h: int, w: int, window: int,
               window_frames: int | None = None, temperature: float = 2.0, mode: str = "soft") -> torch.Tensor:
    """AMF with each query patch's attention restricted to a window: ``[P, h*w, 2]`` displacements (patch
    units) for the ``P`` frame pairs ``(i, j)`` with ``|i - j| <= window_frames`` (all pairs when None),
    in order of ``i`` then ``j``. ``q``, ``k``: ``[1, H, F*h*w, d]`` (the loop's capture).

    The head-averaged logits ``S[m, n]`` are :func:`ditflow_fast.compute_amf`'s; key patches ``n`` farther
    than ``window // 2`` patches from query ``m``'s own position (in x or in y) are left out before the
    softmax (soft: ``temperature``) or the argmax (lowest index on ties). So with a window that covers the
    frame and every pair this is ``compute_amf``'s AMF of those pairs.

    FastVMT-style, not FastVMT's: its code centres each 3 x 4 tile's 21 x 21 window on where the tile's
    centre patch attends in the whole target frame (a coarse first pass), takes frame pairs forward only
    (``j`` from ``i`` to ``i + 3``) with weights falling from 1 to 0.8 with distance, averages q and k over
    the heads before one dot product, and adds a loss on the change of the window's mean key over time;
    here the window is centred on the query's own position (the paper's premise that frame-to-frame
    motion is small), pairs go both ways, unweighted, with the head-averaged logits of ``flow``, and no
    extra loss. The window is a mask on dense per-frame-pair scores: it changes what the AMF sees, not
    what it costs (``F * (2 * window_frames + 1) * (h*w)**2`` scores, fine for the toy models; FastVMT
    gathers only the window's keys)."""
    if q.dim() != 4 or q.shape[0] != 1 or q.shape != k.shape or q.shape[2] != frames * h * w:
        raise ValueError(f"q and k must be [1, H, F*h*w, d] with F*h*w = {frames * h * w}, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if isinstance(window, bool) or int(window) != window or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd whole number of patches >= 1, got {window!r}")
    if window_frames is not None and (isinstance(window_frames, bool) or int(window_frames) != window_frames
                                      or window_frames < 0):
        raise ValueError(f"window_frames must be a whole number of frames >= 0 (or None: all), got {window_frames!r}")
    if mode not in ("soft", "argmax"):
        raise ValueError(f"mode must be 'soft' or 'argmax', got {mode!r}")
    heads, d, hw = q.shape[1], q.shape[3], h * w
    # the mean over heads of q_h . k_h / sqrt(d) is one dot product of the heads laid side by side
    qc = q[0].float().transpose(0, 1).reshape(frames, hw, heads * d)
    kc = k[0].float().transpose(0, 1).reshape(frames, hw, heads * d)
    pos = patch_coords(h, w, device=q.device, dtype=torch.float32)  # [hw, 2] (x, y)
    outside = ((pos[:, None] - pos[None]).abs() > window // 2).any(-1)  # [query, key]
    span = frames - 1 if window_frames is None else min(int(window_frames), frames - 1)
    out = []
    for i in range(frames):
        lo, hi = max(0, i - span), min(frames, i + span + 1)
        s = torch.einsum("mc,jnc->jmn", qc[i], kc[lo:hi]) / (heads * math.sqrt(d))
        s = s.masked_fill(outside, float("-inf"))
        target = pos[s.argmax(-1)] if mode == "argmax" else torch.softmax(temperature * s, dim=-1) @ pos
        out.append(target - pos)
    return torch.cat(out)


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
        if kind == "flow_window":
            # the reference's q and k, not its AMF: the window is a setting of the loss, and a target
            # cached for one window (guidance.ref_cache keys targets by loss kind) must serve any other
            q, k = capture
            return {"q": q.detach().float(), "k": k.detach().float()}
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
         temperature: float = 2.0, threshold: bool = True, backend: str = "auto", window: int = 5,
         window_frames: int | None = 3) -> torch.Tensor:
    """Scalar loss between the generation's capture and ``target`` (from :func:`reference`). ``window``,
    ``window_frames``: ``flow_window``'s (:func:`window_amf`; :func:`options` reads them from the config)."""
    _check(kind)
    if kind == "flow_window":
        q, k = capture
        with torch.no_grad():
            ref = window_amf(target["q"], target["k"], frames=frames, h=h, w=w, window=window,
                             window_frames=window_frames, mode="argmax")
        gen = window_amf(q, k, frames=frames, h=h, w=w, window=window, window_frames=window_frames,
                         temperature=temperature, mode="soft")
        return amf_loss(gen, ref, threshold=threshold)
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
