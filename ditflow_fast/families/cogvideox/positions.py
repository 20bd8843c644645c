"""CogVideoX's positional embeddings, for ``--opt-mode emb``: its 3-D RoPE (5B, 1.5-5B) or its additive
position table (2B), computed as diffusers' pipeline computes them, and overridden for a forward."""

from __future__ import annotations

import contextlib

import torch

from .patches import patch_frames


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
    """The 3-D RoPE ``(cos, sin)``, each ``[T*h*w, head_dim]`` float32, placed as diffusers' pipeline places it;
    None for models without RoPE (CogVideoX-2B). ``latent_frames``: what the transformer gets (padded for 1.5).

    1.0: ``T`` latent frames, the grid cropped into the base grid (linspace). 1.5 (``patch_size_t``): ``T``
    temporal patches, integer positions sliced from a ``sample_height/p x sample_width/p`` grid (so a frame may
    hold at most that many patches)."""
    cfg = transformer.config
    if not cfg.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p = cfg.patch_size
    gh, gw = latent_height // p, latent_width // p
    base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
    if cfg.patch_size_t is None:
        crops = _crop_region(gh, gw, base_w, base_h)
        cos, sin = get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                                           temporal_size=latent_frames, device=device)
        return cos.float(), sin.float()
    if gh > base_h or gw > base_w:  # the slice would be short: the tables would not fit the tokens
        raise ValueError(f"a {gh}x{gw}-patch frame exceeds this model's RoPE grid of {base_h}x{base_w} patches")
    cos, sin = get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                       temporal_size=patch_frames(latent_frames, cfg.patch_size_t),
                                       grid_type="slice", max_size=(base_h, base_w), device=device)
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
