"""Tensor layouts every backend shares: the heads-concatenated input, the output layout, displacements, gradients.

Backends reduce per query token to ``[B, N, F, 2]`` (query-major: one target per query and target
frame) because that is how a row of scores is produced; the public layout is ``[B, F_i, F_j, h*w, 2]``.
Gradients come back as ``[B, N, H*d]`` over the video tokens and are expanded here to the shape
and layout of ``q``/``k``, zero on the text tokens.
"""

from __future__ import annotations

import torch

from .._problem import AMFProblem
from ..geometry import patch_coords


def concat_heads(t: torch.Tensor, text_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, H, T, d]`` -> ``[B, N, H*d]`` video tokens in the compute dtype (one copy)."""
    b, h, _, d = t.shape
    return t[:, :, text_tokens:].permute(0, 2, 1, 3).to(dtype).reshape(b, -1, h * d)


def to_output_layout(per_query: torch.Tensor, p: AMFProblem) -> torch.Tensor:
    """``[B, N, F_j, 2]`` (query-major) -> ``[B, F_i, F_j, h*w, 2]``."""
    b = per_query.shape[0]
    return per_query.reshape(b, p.frames, p.patches, p.frames, 2).permute(0, 1, 3, 2, 4).contiguous()


def from_output_layout(grad: torch.Tensor, p: AMFProblem) -> torch.Tensor:
    """Inverse of :func:`to_output_layout`: ``[B, F_i, F_j, h*w, 2]`` -> ``[B, N, F_j, 2]``."""
    return grad.permute(0, 1, 3, 2, 4).reshape(grad.shape[0], p.tokens, p.frames, 2)


def displacement(target: torch.Tensor, p: AMFProblem) -> torch.Tensor:
    """Absolute targets ``[B, N, F, 2]`` -> displacements ``target - pos(m)`` in the output layout."""
    own = patch_coords(p.height, p.width, device=target.device, dtype=target.dtype).repeat(p.frames, 1)
    return to_output_layout(target - own[None, :, None, :], p)


def grad_is_head_major(like: torch.Tensor) -> bool:
    """Whether :func:`expand_grad` copies the gradient for ``like`` into a contiguous ``[B, H, T, d]`` tensor (else
    into, or as, a ``[B, T, H, d]`` buffer)."""
    return not like.permute(0, 2, 1, 3).is_contiguous()


def expand_grad(dcat: torch.Tensor | None, like: torch.Tensor, p: AMFProblem, empty=None) -> torch.Tensor | None:
    """``[B, N, H*d]`` -> a gradient for ``like`` (``[B, H, T, d]``), zero on the text tokens; None stays None.

    Laid out like ``like`` so that autograd passes it on without re-laying it out: a
    ``[B, T, H, d]`` buffer seen through ``permute`` when ``like`` is such a view (what a DiT's
    attention hands over; then the video part is one contiguous copy, or none without text
    tokens), a contiguous ``[B, H, T, d]`` tensor otherwise. Only the text rows are zero-filled:
    the video rows are overwritten anyway, and they are nearly all of it (226 text tokens next to
    8,100 or more video tokens at CogVideoX sizes). ``empty(shape, dtype)`` makes the buffer (default: a new
    tensor; the ``cpu`` backend passes its kept scratch buffers, which are already faulted in).
    """
    if dcat is None:
        return None
    b, h, _, d = like.shape
    video = dcat.reshape(b, p.tokens, h, d)
    empty = empty or (lambda shape, dtype: dcat.new_empty(shape, dtype=dtype))
    if not grad_is_head_major(like):
        if p.text_tokens == 0:
            return video.to(like.dtype).permute(0, 2, 1, 3)
        full = empty((b, p.text_tokens + p.tokens, h, d), like.dtype)
        full[:, :p.text_tokens].zero_()
        full[:, p.text_tokens:].copy_(video)
        return full.permute(0, 2, 1, 3)
    full = empty(tuple(like.shape), like.dtype)
    full[:, :, :p.text_tokens].zero_()
    full[:, :, p.text_tokens:].copy_(video.permute(0, 2, 1, 3))
    return full
