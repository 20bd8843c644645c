"""HunyuanVideo's guided joint attention: one processor for both kinds of block, on each block's ``attn``.

Both kinds attend over ``[video tokens, text tokens]`` (text is a suffix), with RoPE on the video tokens only:

- a **dual-stream** block (``transformer_blocks``) projects video with ``to_q/to_k/to_v`` and text with its own
  ``add_q_proj/add_k_proj/add_v_proj`` and concatenates them after the norms and RoPE;
- a **single-stream** block (``single_transformer_blocks``) concatenates the two streams first and projects
  them together with ``to_q/to_k/to_v``; RoPE goes on the leading video part.

Either way the video tokens are the first ``N`` of the joint q/k/v, so the controller's records (q/k after the
norms and RoPE, copied K/V) and the injected K/V are that leading part: the AMF sees video tokens only, and the
text K/V stay the model's own.
"""

from __future__ import annotations

import torch

from ...guidance.controller import split_rope
from ..guided_attention import GuidedProcessor


class HunyuanGuidedAttnProcessor(GuidedProcessor):
    """What diffusers' ``HunyuanVideoAttnProcessor2_0`` computes, with the same operations in the same order
    (bit-identical output when the controller asks nothing), plus capture, K/V copy and injection, and the
    early stop, as the shared :class:`GuidanceController` asks. Takes shared ``(cos, sin)`` RoPE or separate
    ``((cos_q, sin_q), (cos_k, sin_k))`` (emb mode)."""

    kv_label = "HunyuanVideo attention's video part"

    # The stock processor's names: diffusers' Attention.forward passes only the keywords this signature has.
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        dual = attn.add_q_proj is not None
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if not dual and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        n_video = hidden_states.shape[1] - (0 if dual else n_text)

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        plain = (query, key)
        if image_rotary_emb is not None:
            q_rope, k_rope = split_rope(image_rotary_emb)
            if dual or n_text == 0:
                query = apply_rotary_emb(query, q_rope, sequence_dim=1)
                key = apply_rotary_emb(key, k_rope, sequence_dim=1)
            else:  # the video part only; the text suffix as it is
                query = torch.cat([apply_rotary_emb(query[:, :n_video], q_rope, sequence_dim=1),
                                   query[:, n_video:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :n_video], k_rope, sequence_dim=1), key[:, n_video:]], dim=1)
        if dual and encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ek = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = (torch.cat(pair, dim=1) for pair in ((query, eq), (key, ek), (value, ev)))
        key, value = self.ask(query, key, value, n_video, plain=plain)  # the video tokens lead; the text suffix stays
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out, None
        out, context = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            context = attn.to_add_out(context)
        return out, context

