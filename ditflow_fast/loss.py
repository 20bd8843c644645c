"""The AMF loss DiTFlow optimises."""

from __future__ import annotations

import torch


def amf_loss(gen: torch.Tensor, ref: torch.Tensor, threshold: bool = True) -> torch.Tensor:
    """Mean squared error between two AMFs ``[..., 2]``.

    With ``threshold=True`` (DiTFlow's default) only entries whose reference displacement is
    non-zero (``||ref[..., :]|| > 0``) count, averaged over both components of those entries;
    the loss is 0, not NaN, when none qualifies. ``threshold=False`` is the plain MSE.
    The reference carries no gradient.
    """
    for name, t in (("gen", gen), ("ref", ref)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if t.dim() < 1 or t.shape[-1] != 2:
            raise ValueError(f"{name} must end in a (dx, dy) dimension of size 2, got shape {tuple(t.shape)}")
    if gen.shape != ref.shape:
        raise ValueError(f"gen and ref must have the same shape, got {tuple(gen.shape)} and {tuple(ref.shape)}")
    ref = ref.detach().to(gen.dtype)
    sq = (gen - ref).square()
    if not threshold:
        return sq.mean()
    mask = (ref != 0).any(dim=-1, keepdim=True).to(gen.dtype)
    count = mask.sum() * 2
    return (sq * mask).sum() / count.clamp_min(1)
