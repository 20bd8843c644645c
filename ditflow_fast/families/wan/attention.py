"""Wan's guided self-attention: the processor on each block's ``attn1`` and the block output hook.

The processor computes q/k/v as diffusers' ``WanAttnProcessor`` does (bit-identical when nothing is
asked) and lets the shared :class:`~ditflow_fast.guidance.controller.GuidanceController` capture,
inject and stop; it takes separate query and key RoPE for emb-mode optimisation.
"""

from __future__ import annotations

import torch

from ...guidance.controller import split_rope
from ..guided_attention import GuidedProcessor


class WanGuidedAttnProcessor(GuidedProcessor):
    """Wan self-attention (``attn1``) with capture, K/V injection and early stop.

    Computes what diffusers' ``WanAttnProcessor`` computes, with the same operations in the same
    order (bit-identical output when the controller asks nothing), and as the shared
    :class:`GuidanceController` asks (fields as in :mod:`ditflow_fast.guidance.controller`):
    records q/k of the picked batch element after ``norm_q``/``norm_k`` and RoPE as ``[1, H, N, d]``
    views (graph kept); copies K/V; writes reference K/V over every batch element; raises
    :class:`StopForward` after the guidance block. Accepts shared ``(cos, sin)`` or separate
    ``((cos_q, sin_q), (cos_k, sin_k))`` RoPE. Only for self-attention: Wan's cross-attention
    (``attn2``, text and image keys) keeps the stock processor.
    """

    kv_label = "Wan attention of shape"

    # Spelled out with the stock processor's names and order. WanAttention.forward (diffusers 0.42)
    # passes (hidden_states, encoder_hidden_states, attention_mask, rotary_emb) positionally and does
    # not filter keywords by the signature (the older Attention.forward does): a **kwargs catch-all
    # would hide a wrong call instead of failing.
    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb=None,
    ) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError("WanGuidedAttnProcessor is for Wan's self-attention (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        plain = (query, key)
        if rotary_emb is not None:
            q_rope, k_rope = split_rope(rotary_emb)
            query = _apply_rotary(query, *q_rope)
            key = _apply_rotary(key, *k_rope)
        key, value = self.ask(query, key, value, plain=plain)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotation (``WanAttnProcessor``'s inner ``apply_rotary_emb``), same operations."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)

