"""CogVideoX's positional embeddings, for ``--opt-mode emb``: its 3-D RoPE (5B) or its additive
position table (2B), computed as diffusers' pipeline computes them, and overridden for a forward."""

from __future__ import annotations

import contextlib

import torch


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
