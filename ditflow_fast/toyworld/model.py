"""The tiny video DiT of the CogVideoX architecture, its condition embedding and I/O (and loading of
the Wan-architecture one, :mod:`.train_wan`).

The denoiser is diffusers' ``CogVideoXTransformer3DModel`` with a small config and RoPE on. The
committed model is a *latent* model: it denoises the frame autoencoder's 8 x 8 x 8 latents with patch
size 1 (see below); a pixel model (the first one, kept as history) ran on pixels (3 channels,
values in [-1, 1], layout ``[B, F, C, H, W]``) with patch size 4. Either way a 32 x 32 frame is an
8 x 8 token grid, so the AMF of a block is ``[F, F, 64, 2]``. The "prompt" is a
learned table mapping each condition (object kind x colour, plus the empty prompt) to
``TEXT_TOKENS`` text tokens of ``text_embed_dim``; they enter as ``encoder_hidden_states`` exactly
as T5 embeddings do in CogVideoX. The scheduler is CogVideoX's DDIM with v-prediction and a
zero-terminal-SNR schedule.

A model folder (``assets/tiny_dit``) holds ``transformer/`` (``config.json`` and
``diffusion_pytorch_model.safetensors``, loadable by ``from_pretrained``), ``scheduler/``,
``cond_embed.safetensors`` (``weight``: ``[NUM_CONDITIONS + 1, TEXT_TOKENS, text_embed_dim]``) and
``world.json`` (the clip geometry it was trained on). A *latent* model also holds ``vae/``, the frame
autoencoder whose latents it denoises (:mod:`.codec`; the DiT then has patch size 1 on an 8 x 8 x C
latent grid, so its tokens and AMF are the pixel model's); :func:`.codec.load_codec` returns it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .settings import DEFAULT_DIR  # defined there, without torch, for the command line's parser
from .world import CHECKER, FRAMES, NULL_CONDITION, NUM_CONDITIONS, RADIUS, SIZE, SPEED_RANGE

TEXT_TOKENS, TEXT_DIM = 4, 32

TRANSFORMER_CONFIG = dict(
    num_attention_heads=2, attention_head_dim=32, in_channels=3, out_channels=3, time_embed_dim=64,
    text_embed_dim=TEXT_DIM, num_layers=4, sample_width=SIZE, sample_height=SIZE, sample_frames=FRAMES,
    patch_size=4, temporal_compression_ratio=1, max_text_seq_length=TEXT_TOKENS,
    use_rotary_positional_embeddings=True,
)
SCHEDULER_CONFIG = dict(
    prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
    snr_shift_scale=1.0, clip_sample=False,
)


def build_transformer(seed: int = 0, **overrides):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_scheduler(**overrides):
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(**{**SCHEDULER_CONFIG, **overrides})


class ConditionEmbedding(torch.nn.Module):
    """Condition index -> ``[TEXT_TOKENS, text_embed_dim]`` "text" tokens (index NULL_CONDITION = empty prompt)."""

    def __init__(self, tokens: int = TEXT_TOKENS, dim: int = TEXT_DIM, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(NUM_CONDITIONS + 1, tokens, dim, generator=g))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.weight[condition]


def latent_overrides(codec) -> dict:
    """Transformer config keys for a DiT that works in ``codec``'s latents (none for pixels)."""
    if codec.factor == 1:
        return {}
    size = codec.latent_size(SIZE)
    # patch 1: a latent cell covers 4 x 4 px, so the token grid (8 x 8) and the AMF stay the pixel model's
    return dict(in_channels=codec.channels, out_channels=codec.channels, sample_width=size, sample_height=size,
                patch_size=1)


def rope(transformer, frames: int = FRAMES, height: int | None = None, width: int | None = None):
    """RoPE ``(cos, sin)`` for a clip of this size (latent cells; default the model's sample grid), as the
    CogVideoX pipeline builds it.

    The latent grid is the sample grid here, so the crop that CogVideoX 1.0 fits the token grid into is
    the whole grid."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = transformer.config
    height = cfg.sample_height if height is None else height
    width = cfg.sample_width if width is None else width
    p = cfg.patch_size
    gh, gw = height // p, width // p
    if (gh, gw) != (cfg.sample_height // p, cfg.sample_width // p):
        raise ValueError(f"the tiny model works at {cfg.sample_height}x{cfg.sample_width} latent cells, "
                         f"got {height}x{width}")
    cos, sin = get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=((0, 0), (gh, gw)),
                                       grid_size=(gh, gw), temporal_size=frames)
    return cos.float(), sin.float()


def world_geometry() -> dict:
    """The clip geometry of the package's world, as a model folder's ``world.json`` records it."""
    return {"frames": FRAMES, "size": SIZE, "radius": RADIUS, "checker": CHECKER, "speed_range": list(SPEED_RANGE)}


def save_model(folder, transformer, cond: ConditionEmbedding, extra: dict | None = None, scheduler=None) -> Path:
    """Write a model folder; each file is written to a temporary name then renamed (never half-written)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path, write_text

    folder = Path(folder)
    state = {k: v.detach().contiguous().clone() for k, v in transformer.state_dict().items()}
    with atomic_path(folder / "transformer" / "diffusion_pytorch_model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_text(folder / "transformer" / "config.json", transformer.to_json_string())
    write_text(folder / "scheduler" / "scheduler_config.json", (scheduler or build_scheduler()).to_json_string())
    with atomic_path(folder / "cond_embed.safetensors") as tmp:
        save_file({"weight": cond.weight.detach().contiguous().clone()}, str(tmp))
    world = json.dumps({**world_geometry(), "null_condition": NULL_CONDITION, **(extra or {})}, indent=1)
    write_text(folder / "world.json", world)
    return folder


def world_mismatch(recorded: dict) -> dict:
    """``{key: (recorded value, the package's)}`` for each geometry key that ``recorded`` holds with another value."""
    return {k: (recorded[k], v) for k, v in world_geometry().items() if k in recorded and recorded[k] != v}


def _check_world(path: Path) -> None:
    # a model trained on other clips still runs; the demo's numbers would just not mean what they say
    differ = world_mismatch(json.loads(path.read_text()) if path.is_file() else {})
    if differ:
        warnings.warn(f"{path.parent} was trained on another world than this package's (recorded, now): {differ}",
                      stacklevel=3)


def load_model(folder=DEFAULT_DIR):
    """``(transformer, condition_embedding, scheduler)`` from a model folder, in eval mode, float32
    (its codec, pixels or a ``vae/``: :func:`.codec.load_codec`). The transformer's class (its
    ``config.json``) says the family: CogVideoX (DDIM scheduler) or Wan (UniPC flow scheduler)."""
    import diffusers
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"no tiny DiT in {folder} (expected transformer/config.json); "
                                "train one with scripts/train_tiny_dit.py")
    cls = json.loads((folder / "transformer" / "config.json").read_text()).get("_class_name")
    classes = {"CogVideoXTransformer3DModel": "CogVideoXDDIMScheduler",
               "WanTransformer3DModel": "UniPCMultistepScheduler"}
    if cls not in classes:
        raise ValueError(f"{folder}: a {cls} transformer; the toy world has CogVideoX and Wan models")
    transformer = getattr(diffusers, cls).from_pretrained(folder / "transformer").eval()
    w = load_file(str(folder / "cond_embed.safetensors"))["weight"]
    cond = ConditionEmbedding(w.shape[1], w.shape[2])
    cond.weight.data.copy_(w)
    scheduler = getattr(diffusers, classes[cls]).from_pretrained(folder / "scheduler")
    _check_world(folder / "world.json")
    return transformer, cond.eval().requires_grad_(False), scheduler


def to_family_layout(transformer, latents: torch.Tensor) -> torch.Tensor:
    """The codec's ``[B, F, C, h, w]`` in the layout of the transformer's family (Wan: ``[B, C, F, h, w]``)."""
    from ..families import family_of

    return latents if family_of(transformer).latent_layout == "BFCHW" else latents.permute(0, 2, 1, 3, 4)


def from_family_layout(transformer, latents: torch.Tensor) -> torch.Tensor:
    from ..families import family_of

    return latents if family_of(transformer).latent_layout == "BFCHW" else latents.permute(0, 2, 1, 3, 4)
