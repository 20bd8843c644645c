"""The AMF loss DiTFlow optimises."""

from __future__ import annotations

import torch

from ._problem import check_finite


def amf_loss(gen: torch.Tensor, ref: torch.Tensor, threshold: bool = True) -> torch.Tensor:
    """Mean squared error between two AMFs ``[..., 2]``.

    With ``threshold=True`` (DiTFlow's default) only entries whose reference displacement is
    non-zero (``||ref[..., :]|| > 0``) count, averaged over both components of those entries;
    the loss is 0, not NaN, when none qualifies. ``threshold=False`` is the plain MSE (also 0 on
    empty input). The reference carries no gradient.

    Raises:
        TypeError: ``gen`` or ``ref`` is not a floating-point tensor, or ``threshold`` is not a bool.
        ValueError: ``gen`` or ``ref`` does not end in a dimension of size 2, their shapes differ,
            or either holds NaN or inf (the message names which): a loss of NaN would turn every
            gradient step after it into NaN. (Not checked inside ``torch.compile``, where it would
            break the graph; AMFs from :func:`ditflow_fast.compute_amf` are checked there too.)
    """
    for name, t in (("gen", gen), ("ref", ref)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if t.dim() < 1 or t.shape[-1] != 2:
            raise ValueError(f"{name} must end in a (dx, dy) dimension of size 2, got shape {tuple(t.shape)}")
    if gen.shape != ref.shape:
        raise ValueError(f"gen and ref must have the same shape, got {tuple(gen.shape)} and {tuple(ref.shape)}")
    if not isinstance(threshold, bool):
        raise TypeError(f"threshold must be a bool (mask to non-zero reference entries or not), got {threshold!r}")
    if not torch.compiler.is_compiling():  # a host-side check; compute_amf's op checks its own output
        for name, t in (("gen", gen), ("ref", ref)):
            check_finite(name, t, what="the AMF loss of a non-finite flow is undefined")
    ref = ref.detach().to(gen.dtype)
    sq = (gen - ref).square()
    if not threshold:
        return sq.sum() / max(1, sq.numel())  # mean, but 0 rather than NaN on empty input
    mask = (ref != 0).any(dim=-1, keepdim=True).to(gen.dtype)
    count = mask.sum() * 2
    return (sq * mask).sum() / count.clamp_min(1)
