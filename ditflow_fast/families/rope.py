"""Separate query and key RoPE for ``--opt-mode emb``, for families whose transformer makes its RoPE tables in one
module, ``transformer.rope`` (Wan, LTX-Video, HunyuanVideo).

The optimised tensor is ``[2 (q, k), 2 (cos, sin), N, d]`` float32 (``d``: the width the tables rotate, a head's or,
for LTX, the full width). :func:`qk_tables` builds it from the model's own tables; :func:`rope_override` hands it to the
blocks, for every forward while active, through a forward hook on ``transformer.rope`` that returns
``((cos_q, sin_q), (cos_k, sin_k))`` in the stock tables' shape and dtype (the family's guided processors take
that form; the gradient reaches the optimised tensor).
"""

from __future__ import annotations

import contextlib

import torch


def qk_tables(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``[2 (q, k), 2 (cos, sin), N, d]`` float32 from the model's ``(cos, sin)`` ``[N, d]``: queries and keys start
    from the same tables, then part."""
    one = torch.stack([cos.float(), sin.float()])
    return torch.stack([one, one.clone()])


@contextlib.contextmanager
def rope_override(transformer, emb: torch.Tensor | None, family: str, *, token_axis: int, width: str = "d"):
    """While active, every forward of ``transformer`` uses ``emb`` as separate query and key RoPE; ``emb=None``: no
    change. The stock tables are ``[..., N, ..., d]`` with the tokens on ``token_axis`` (Wan ``[1, N, 1, d]``: 1;
    LTX ``[B, N, D]``: 1; HunyuanVideo ``[N, d]``: 0); each of ``emb``'s tables goes in as that shape with every
    other axis 1. Needs the family's guided processors (the stock ones take shared RoPE only): ``family`` names the
    call that installs them in the error; ``width`` names ``d`` in the shape error."""
    if emb is None:
        yield
        return
    if getattr(transformer, "_ditflow_guidance", None) is None:
        raise ValueError(f"emb_override needs the guided processors: call {family} first")
    if emb.dim() != 4 or emb.shape[:2] != (2, 2):
        raise ValueError(f"emb must be [2 (q, k), 2 (cos, sin), N, {width}], got {tuple(emb.shape)}")

    def hook(module, args, output):
        cos = output[0]
        n, d = cos.shape[token_axis], cos.shape[-1]
        if tuple(emb.shape[2:]) != (n, d):
            raise ValueError(f"emb of shape {tuple(emb.shape)} does not fit this latent's RoPE [2, 2, {n}, {d}]")
        e = emb.to(device=cos.device, dtype=cos.dtype)
        shape = [1] * cos.dim()
        shape[token_axis], shape[-1] = n, d
        return (e[0, 0].reshape(shape), e[0, 1].reshape(shape)), (e[1, 0].reshape(shape), e[1, 1].reshape(shape))

    handle = transformer.rope.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
