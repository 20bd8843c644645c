"""Input makers and the spec's agreement checks, shared by every backend's tests."""

from __future__ import annotations

import math

import torch

from ditflow_fast.backends.reference import amf_reference

# docs/amf.md "Agreement": relative error of soft outputs and gradients against float64.
SOFT_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
ARGMAX_SCORE_ATOL = 1e-4


def make_qk(batch, heads, frames, height, width, head_dim, text_tokens=0, dtype=torch.float32, layout="contiguous",
            seed=0, scale=1.0):
    """Random q, k ``[B, H, T, d]`` in one of three memory layouts.

    ``transposed`` is a permuted view of a ``[B, T, H, d]`` buffer (what a ``[B, S, heads, D]`` model
    hands over); ``strided`` slices every other element of a wider last dimension.
    """
    gen = torch.Generator().manual_seed(seed)
    t = text_tokens + frames * height * width

    def one():
        if layout == "transposed":
            return (torch.randn(batch, t, heads, head_dim, generator=gen) * scale).to(dtype).permute(0, 2, 1, 3)
        if layout == "strided":
            return (torch.randn(batch, heads, t, 2 * head_dim, generator=gen) * scale).to(dtype)[..., ::2]
        return (torch.randn(batch, heads, t, head_dim, generator=gen) * scale).to(dtype)

    q, k = one(), one()
    if layout != "contiguous":
        assert not q.is_contiguous()
    return q, k


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def head_mean_scores(q, k, frames, height, width, text_tokens):
    """float64 ``[B, N, F, h*w]`` head-averaged logits ``S`` of the spec, for argmax checks."""
    b, heads, _, d = q.shape
    qv, kv = q[:, :, text_tokens:].double(), k[:, :, text_tokens:].double()
    s = torch.einsum("bhmd,bhnd->bmn", qv, kv) / (heads * math.sqrt(d))
    return s.reshape(b, frames * height * width, frames, height * width)


def assert_argmax_agrees(out, q, k, frames, height, width, text_tokens, atol=ARGMAX_SCORE_ATOL):
    """The spec's argmax agreement: chosen key near-maximal everywhere, identical where unambiguous."""
    if out.dim() == 4:
        out, q, k = out[None], q[None], k[None]
    s = head_mean_scores(q, k, frames, height, width, text_tokens)  # [B, m, j, n]
    hw = height * width
    own = torch.arange(frames * hw) % hw
    own_xy = torch.stack((own % width, own // width), -1).double()  # [m, 2]
    d = out.double().permute(0, 1, 3, 2, 4).reshape(out.shape[0], frames * hw, frames, 2)  # [B, m, j, 2]
    target = d + own_xy[None, :, None, :]
    assert torch.equal(target, target.round()), "argmax displacements must be whole patches"
    tx, ty = target[..., 0].long(), target[..., 1].long()
    assert bool(((tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)).all()), "argmax target outside the frame"
    chosen = s.gather(-1, (ty * width + tx).unsqueeze(-1)).squeeze(-1)
    top2 = s.topk(min(2, hw), dim=-1).values
    assert bool((top2[..., 0] - chosen <= atol).all()), "a chosen key is not within atol of the row maximum"
    ref = amf_reference(q, k, frames=frames, height=height, width=width, mode="argmax", text_tokens=text_tokens)
    ref = ref.permute(0, 1, 3, 2, 4).reshape_as(d)
    clear = (top2[..., 0] - top2[..., -1] > atol) if hw > 1 else torch.ones_like(chosen, dtype=torch.bool)
    assert torch.equal(d[clear], ref[clear]), "argmax differs from the reference where the maximum is unambiguous"
