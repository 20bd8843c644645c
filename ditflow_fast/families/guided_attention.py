"""What the guided self-attention processors of Wan, LTX-Video and HunyuanVideo share: q/k/v laid out
``[B, T, H, d]`` (tokens before heads, as diffusers' dispatcher takes them) with the video tokens first, and the
shared :class:`~ditflow_fast.guidance.controller.GuidanceController` asked what to capture, copy, inject or stop.

A family's processor computes q/k/v exactly as diffusers' stock processor does, then calls :meth:`GuidedProcessor.ask`
before its attention; CogVideoX's (``[B, H, T, d]``, the text a prefix) is its own.
"""

from __future__ import annotations

import torch

from ..guidance.controller import GuidanceController, StopForward


class GuidedProcessor:
    """One instance per block (it knows its block index); all share one :class:`GuidanceController`.

    ``kv_label`` names the attention in the error for injected K/V of the wrong shape.
    """

    kv_label = "attention of shape"
    _attention_backend = None  # what diffusers' dispatcher reads off a processor (set_attention_backend writes it)
    _parallel_config = None

    def __init__(self, block_index: int, controller: GuidanceController):
        self.block_index = block_index
        self.controller = controller

    def ask(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, n_video: int | None = None,
            plain: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The controller's requests on ``[B, T, H, d]`` q/k/v after the norms and RoPE; returns ``(key, value)``.
        ``plain``: q/k before RoPE, same layout (recorded instead when the controller's ``qk_rope`` is off).

        While armed: q/k of the picked batch element recorded as ``[1, H, N, d]`` views (graph kept), K/V copied,
        :class:`StopForward` raised after the guidance block. Then the reference's video K/V written over every batch
        element. ``n_video``: the leading video tokens when a text suffix follows (the suffix stays the model's own);
        None: every token is a video token."""
        ctrl, idx = self.controller, self.block_index

        def video(t):
            return t if n_video is None else t[:, :n_video]

        if ctrl.armed and idx in ctrl.qk_blocks:
            q, k = ctrl.qk_record((query, key), plain)
            ctrl.qk[idx] = (ctrl._pick(video(q)).transpose(1, 2), ctrl._pick(video(k)).transpose(1, 2))
        if ctrl.armed and idx in ctrl.copy_kv_blocks:
            ctrl.kv[idx] = (ctrl._pick(video(key)).transpose(1, 2).detach().contiguous().clone(),
                            ctrl._pick(video(value)).transpose(1, 2).detach().contiguous().clone())
        if ctrl.armed and idx == ctrl.stop_after and idx not in ctrl.out_blocks:
            raise StopForward
        if idx in ctrl.inject_kv:
            ref_k, ref_v = ctrl.inject_kv[idx]
            key, value = self._replace_video(key, ref_k, n_video), self._replace_video(value, ref_v, n_video)
        return key, value

    def _replace_video(self, t: torch.Tensor, ref: torch.Tensor, n_video: int | None) -> torch.Tensor:
        """``t`` ``[B, T, H, d]`` with its video tokens replaced by ``ref`` ``[1, H, N, d]`` for every batch element
        (a new tensor; a text suffix unchanged)."""
        b, n, h, d = t.shape
        n = n if n_video is None else n_video
        if tuple(ref.shape) != (1, h, n, d):
            raise ValueError(f"injected K/V of shape {tuple(ref.shape)} do not fit {self.kv_label} [1, {h}, {n}, {d}]")
        video = ref.to(dtype=t.dtype, device=t.device).transpose(1, 2).expand(b, -1, -1, -1)
        return video if n_video is None else torch.cat([video, t[:, n_video:]], dim=1)
