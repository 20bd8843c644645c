"""Capture and K/V injection inside CogVideoX attention, through diffusers' processor contract.

:class:`GuidedAttnProcessor` computes exactly what diffusers' ``CogVideoXAttnProcessor2_0`` computes
(same operations in the same order, so outputs are bit-identical when nothing is asked of it) and,
as a shared :class:`GuidanceController` asks, per block:

- accepts separate query and key RoPE (``image_rotary_emb=((cos_q, sin_q), (cos_k, sin_k))``), which
  DiTFlow's embedding optimisation needs, besides diffusers' shared ``(cos, sin)``;
- records ``q`` and ``k`` of one batch element after the q/k norms and RoPE, video tokens only
  (``[1, H, F*h*w, d]``, still attached to the autograd graph);
- copies the video keys and values of a reference forward, then injects them into later forwards;
- stops the forward (raises :class:`StopForward`) once the last guidance block has given what the
  loss needs, so nothing after it runs.

(The controller's arming and the stop: :mod:`ditflow_fast.guidance.controller`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...guidance.controller import (
    GuidanceController,
    StopForward,
    install_processors,
    split_rope,
    uninstall_processors,
)


class GuidedAttnProcessor:
    """CogVideoX joint-attention processor with capture, K/V injection and early stop.

    One instance per block (it knows its block index); all share one :class:`GuidanceController`.
    """

    def __init__(self, block_index: int, controller: GuidanceController):
        self.block_index = block_index
        self.controller = controller

    # The parameters are spelled out: diffusers filters the keyword arguments it passes by this
    # signature, so ``**kwargs`` would silently lose ``image_rotary_emb``.
    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctrl = self.controller
        idx = self.block_index
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, seq, _ = x.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        plain = (query, key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q_rope, k_rope = split_rope(image_rotary_emb)
            # RoPE on the video tokens only. The stock processor writes it in place; a new tensor
            # gives the same values and keeps the un-rotated q/k that the RoPE tables' gradient
            # needs (emb mode without checkpointing would otherwise fail in backward).
            query = torch.cat([query[:, :, :text_len], apply_rotary_emb(query[:, :, text_len:], q_rope)], dim=2)
            if not attn.is_cross_attention:
                key = torch.cat([key[:, :, :text_len], apply_rotary_emb(key[:, :, text_len:], k_rope)], dim=2)

        if ctrl.armed and idx in ctrl.qk_blocks:
            # Views into q/k: they keep the graph, and injection below never writes into them.
            q, k = ctrl.qk_record((query, key), plain)
            ctrl.qk[idx] = (ctrl._pick(q)[:, :, text_len:], ctrl._pick(k)[:, :, text_len:])
        if ctrl.armed and idx in ctrl.copy_kv_blocks:
            ctrl.kv[idx] = (ctrl._pick(key)[:, :, text_len:].detach().clone(),
                            ctrl._pick(value)[:, :, text_len:].detach().clone())
        if ctrl.armed and idx == ctrl.stop_after and idx not in ctrl.out_blocks:
            raise StopForward
        if idx in ctrl.inject_kv:
            ref_k, ref_v = ctrl.inject_kv[idx]
            key = _replace_video(key, ref_k, text_len)
            value = _replace_video(value, ref_v, text_len)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        return video_out, encoder_out


def _replace_video(t: torch.Tensor, ref: torch.Tensor, text_len: int) -> torch.Tensor:
    """``t`` with its video tokens replaced by ``ref`` for every batch element (out of place)."""
    if ref.shape[-2] != t.shape[-2] - text_len or ref.shape[1] != t.shape[1] or ref.shape[-1] != t.shape[-1]:
        raise ValueError(f"injected K/V of shape {tuple(ref.shape)} do not fit attention of shape {tuple(t.shape)} "
                         f"with {text_len} text tokens")
    ref = ref.to(dtype=t.dtype, device=t.device).expand(t.shape[0], -1, -1, -1)
    return torch.cat([t[:, :, :text_len], ref], dim=2)


def install(transformer, controller: GuidanceController | None = None) -> GuidanceController:
    """Put a :class:`GuidedAttnProcessor` on every block of a CogVideoX transformer (a CogVideoX block returns
    ``(video, text)`` hidden states). Idempotent; :func:`uninstall` restores the stock processor."""
    uninstall(transformer)
    return install_processors(transformer, transformer.transformer_blocks, GuidedAttnProcessor,
                              lambda output: output[0], controller)


def uninstall(transformer) -> None:
    """Remove what :func:`install` added and put back diffusers' stock CogVideoX processor."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    uninstall_processors(transformer, transformer.transformer_blocks, CogVideoXAttnProcessor2_0)
