"""Transformer forwards for guidance: truncated runs, positional embeddings to optimise or inject.

The truncated forward does not copy diffusers' forward: it arms the controller and calls the
transformer as usual; the processor (or the block's output hook) raises :class:`StopForward` once
the last guidance block has produced what the loss needs, and this module catches it. Nothing
after that point runs (later blocks, ``norm_final``, ``norm_out``, ``proj_out``).

Gradient checkpointing: diffusers checkpoints each block with ``use_reentrant=False``; torch throws
the stop into the checkpoint's context so its hooks unwind. In the backward, torch recomputes the
stopped block only up to its last saved tensor (early stop, forced on here), which lies before
the raise; the controller is disarmed by then anyway, so recomputation never stops nor captures.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import set_checkpoint_early_stop

from .processor import GuidanceController, StopForward, controller_of


def run_until(transformer, *, stop_after: int | None, qk_blocks=(), out_blocks=(), copy_kv_blocks=(), call=None,
              n_blocks: int | None = None, **model_kwargs) -> GuidanceController:
    """Run ``transformer`` and record what is asked; stop after block ``stop_after`` (None: run all).

    The forward is ``call()`` when given (a family's own call, e.g. Wan's), else
    ``transformer(**model_kwargs, return_dict=False)`` (CogVideoX's keywords: ``hidden_states``,
    ``encoder_hidden_states``, ``timestep``, ``image_rotary_emb``); ``n_blocks`` defaults to
    ``len(transformer.transformer_blocks)``. Returns the controller, whose ``qk`` / ``out`` / ``kv``
    dicts hold the records (block -> tensors). The transformer's own output is discarded.
    """
    ctrl = controller_of(transformer)
    n_blocks = len(transformer.transformer_blocks) if n_blocks is None else n_blocks
    wanted = set(qk_blocks) | set(out_blocks) | set(copy_kv_blocks)
    for b in wanted | ({stop_after} if stop_after is not None else set()):
        if not 0 <= b < n_blocks:
            raise ValueError(f"block index {b} out of range: the transformer has {n_blocks} blocks")
    if stop_after is not None and wanted and stop_after < max(wanted):
        raise ValueError(f"stop_after={stop_after} comes before block {max(wanted)}, whose records are wanted")
    if call is None:
        def call():
            return transformer(**model_kwargs, return_dict=False)
    ctrl.clear_captures()
    ctrl.qk_blocks, ctrl.out_blocks = frozenset(qk_blocks), frozenset(out_blocks)
    ctrl.copy_kv_blocks, ctrl.stop_after = frozenset(copy_kv_blocks), stop_after
    ctrl.armed = True
    stopped = False
    try:
        with set_checkpoint_early_stop(True):
            call()
    except StopForward:
        stopped = True
    finally:
        ctrl.armed = False
        ctrl.qk_blocks = ctrl.out_blocks = ctrl.copy_kv_blocks = frozenset()
        ctrl.stop_after = None
    if stop_after is not None and not stopped:
        raise RuntimeError(f"the forward never reached guidance block {stop_after}")
    return ctrl


def _crop_region(grid_h: int, grid_w: int, base_w: int, base_h: int):
    """Top-left and bottom-right of a ``grid_h x grid_w`` grid fitted into the base grid, centred,
    aspect kept (the crop CogVideoX 1.0 uses to place RoPE coordinates)."""
    if grid_h / grid_w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / grid_h * grid_w))
    else:
        rw, rh = base_w, int(round(base_w / grid_w * grid_h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def rotary_embedding(transformer, latent_frames: int, latent_height: int, latent_width: int, device=None):
    """The 3-D RoPE ``(cos, sin)``, each ``[F*h*w, head_dim]`` float32, CogVideoX 1.0 placement;
    None for models without RoPE (CogVideoX-2B)."""
    cfg = transformer.config
    if not cfg.use_rotary_positional_embeddings:
        return None
    if cfg.patch_size_t is not None:
        raise ValueError("CogVideoX 1.5 checkpoints (patch_size_t set) are not supported by the guidance loop")
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p = cfg.patch_size
    gh, gw = latent_height // p, latent_width // p
    crops = _crop_region(gh, gw, cfg.sample_width // p, cfg.sample_height // p)
    cos, sin = get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                                       temporal_size=latent_frames, device=device)
    return cos.float(), sin.float()


def base_position_table(transformer, latent_frames: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """The video part ``[F*h*w, D]`` (float32) of the additive positional table the patch embedding
    adds for this size (the learned or sin-cos table of CogVideoX-2B)."""
    pe = transformer.patch_embed
    if not (pe.use_positional_embeddings or pe.use_learned_positional_embeddings):
        raise ValueError("this transformer has no additive positional embedding (it uses RoPE)")
    frames_px = (latent_frames - 1) * pe.temporal_compression_ratio + 1
    if (pe.sample_height, pe.sample_width, pe.sample_frames) == (latent_height, latent_width, frames_px):
        table = pe.pos_embedding
    else:
        table = pe._get_positional_embeddings(latent_height, latent_width, frames_px)
    return table[0, pe.max_text_seq_length:].float().detach().clone()


@contextlib.contextmanager
def position_override(transformer, table: torch.Tensor | None, base: torch.Tensor | None):
    """While active, the patch embedding adds ``table`` ``[F*h*w, D]`` to the video tokens instead of
    the model's own ``base`` table (a forward hook adds ``table - base``, which keeps the gradient
    flowing into ``table`` and is exactly zero when ``table`` equals ``base``)."""
    if table is None:
        yield
        return
    if base is None or table.shape != base.shape:
        raise ValueError(f"position table of shape {tuple(table.shape)} does not match the model's "
                         f"{None if base is None else tuple(base.shape)}")

    def hook(module, args, output):
        text_len = output.shape[1] - table.shape[0]
        delta = (table - base.to(table.device)).to(output.dtype)
        return torch.cat([output[:, :text_len], output[:, text_len:] + delta], dim=1)

    handle = transformer.patch_embed.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
