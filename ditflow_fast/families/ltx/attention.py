"""LTX-Video's guided self-attention: the processor on each block's ``attn1``.

It computes q/k/v as diffusers' ``LTXVideoAttnProcessor`` does (bit-identical when nothing is asked) and lets the
shared :class:`~ditflow_fast.guidance.controller.GuidanceController` capture, inject and stop. LTX differs from
Wan in where the heads split: ``norm_q``/``norm_k`` and the RoPE act on the full width ``D = heads * head_dim``
(the RoPE table is ``[N, D]``, each head its own slice of frequencies), and the heads are split after them.
"""

from __future__ import annotations

import torch

from ...guidance.controller import split_rope
from ..guided_attention import GuidedProcessor


class LTXGuidedAttnProcessor(GuidedProcessor):
    """LTX self-attention (``attn1``) with capture, K/V injection and early stop.

    The same operations in the same order as ``LTXVideoAttnProcessor`` (diffusers' own ``apply_rotary_emb``):
    ``to_q/k/v`` -> ``norm_q/k`` over ``D`` -> RoPE over ``D`` -> heads. Then, as the controller asks, q/k of
    the picked batch element are recorded as ``[1, H, N, d]`` views (graph kept), K/V copied, reference K/V
    written over every batch element, and :class:`StopForward` raised after the guidance block. Takes shared
    ``(cos, sin)`` or separate ``((cos_q, sin_q), (cos_k, sin_k))`` RoPE (emb mode). Self-attention only: the
    cross-attention to the T5 tokens (``attn2``) keeps the stock processor, so every token here is a video token.
    """

    kv_label = "LTX attention of shape"

    # The stock processor's names and order: LTXAttention.forward passes them positionally and filters keywords
    # by this signature, so a **kwargs catch-all would hide a changed call instead of failing.
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        if encoder_hidden_states is not None:
            raise ValueError("LTXGuidedAttnProcessor is for LTX's self-attention (attn1) only")
        if attention_mask is not None:  # LTXVideoTransformerBlock gives attn1 none; a new caller must be looked at
            raise ValueError("LTXGuidedAttnProcessor: an attention mask on self-attention is not supported")
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        plain = (query.unflatten(2, (attn.heads, -1)), key.unflatten(2, (attn.heads, -1)))
        if image_rotary_emb is not None:
            q_rope, k_rope = split_rope(image_rotary_emb)
            query = apply_rotary_emb(query, q_rope)
            key = apply_rotary_emb(key, k_rope)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        key, value = self.ask(query, key, value, plain=plain)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

