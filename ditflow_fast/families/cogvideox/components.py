"""Loading CogVideoX components, its T5 prompt encoder, and VAE encode/decode, with clear errors.

Components come from a diffusers model folder or hub id (``transformer/``, ``vae/``, ``scheduler/``;
``tokenizer/`` and ``text_encoder/`` only when prompts are encoded here; T5 needs ``transformers``
and ``sentencepiece``: the ``text`` extra). A folder of :data:`PIPELINES` only: the image-to-video one's
transformer takes the image latents as extra input channels (:func:`image_to_video`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import ModelError, cannot_load  # noqa: F401  (ModelError: importers of this module use it)
from ..base import refuse_foreign_vae, sample_latent, to_uint8

# The diffusers pipelines whose folders the family loads (others share the transformer class: CogVideoX-Fun's
# control pipeline concatenates a control video's latents in channels, which is no image-to-video model).
PIPELINES = ("CogVideoXPipeline", "CogVideoXVideoToVideoPipeline", "CogVideoXImageToVideoPipeline")


def image_to_video(config) -> bool:
    """Whether a transformer config (a dict or a diffusers config) is CogVideoXImageToVideoPipeline's: the image
    latents ride along in channels, so it takes twice the channels it predicts (5B-I2V, 1.5-5B-I2V: 32 in, 16 out)."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    c_in = int(get("in_channels", 16) or 16)
    return c_in == 2 * int(get("out_channels", c_in) or c_in)


def latent_channels(config) -> int:
    """Channels of the latent the loop denoises (the transformer's output; an I2V model's input has twice)."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    return int(get("out_channels", None) or get("in_channels", 16))


def load_components(model: str, dtype: torch.dtype):
    """``(transformer, vae, scheduler_config)`` on the CPU in ``dtype``; raises :class:`ModelError`."""
    model = check_model_ref(model)
    refuse_other_pipeline(model)
    try:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    except Exception as exc:  # diffusers' lazy import turns a broken dependency into a RuntimeError
        raise cannot_load(model, exc) from exc
    refuse_foreign_vae(model, "AutoencoderKLCogVideoX")
    try:
        transformer = CogVideoXTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
        vae = AutoencoderKLCogVideoX.from_pretrained(model, subfolder="vae", torch_dtype=dtype)
        sched_cfg = CogVideoXDDIMScheduler.load_config(model, subfolder="scheduler")
    except Exception as exc:  # hub/network/format errors come in many types
        raise cannot_load(model, exc) from exc
    return transformer.eval().requires_grad_(False), vae.eval().requires_grad_(False), sched_cfg


def check_model_ref(model: str) -> str:
    """A local model folder with the needed subfolders, or something shaped like a hub id."""
    local = Path(model).expanduser()
    if local.exists():
        missing = [s for s in ("transformer", "vae", "scheduler") if not (local / s).is_dir()]
        if missing:
            raise ModelError(f"--model {model}: not a CogVideoX diffusers folder (no {', '.join(missing)}/)")
        return str(local)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelError(f"--model {model}: no such folder, and not a hub id of the form owner/name")
    return model


def refuse_other_pipeline(model: str) -> None:
    """A local folder whose ``model_index.json`` names a pipeline not in :data:`PIPELINES` is refused by name (a hub
    id's index was read by ``families.detect``, which matches only these)."""
    import json

    idx = Path(model).expanduser() / "model_index.json"
    try:
        cls = json.loads(idx.read_text()).get("_class_name") if idx.is_file() else None
    except (OSError, ValueError, AttributeError):
        cls = None
    if cls is not None and cls not in PIPELINES:
        raise ModelError(f"--model {model}: a {cls} folder; the CogVideoX family takes {' / '.join(PIPELINES)} "
                         "folders")


def make_scheduler(sched_cfg, kind: str):
    """DiTFlow's scheduler: ``dpm`` (CogVideoX-5B) or ``ddim`` (2B), trailing timestep spacing."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = CogVideoXDPMScheduler if kind == "dpm" else CogVideoXDDIMScheduler
    return cls.from_config(sched_cfg, timestep_spacing="trailing")


def check_size(transformer, vae, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent ``(F, h, w)`` for a video of this size, or :class:`ModelError` if the model cannot take it."""
    cfg = transformer.config
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    temporal = vae.config.temporal_compression_ratio
    step = spatial * cfg.patch_size
    if height % step or width % step:
        raise ModelError(f"--height/--width {height}x{width}: must be multiples of {step} for this model")
    if cfg.in_channels != cfg.out_channels and not image_to_video(cfg):
        raise ModelError(f"--model: a transformer taking {cfg.in_channels} channels and predicting {cfg.out_channels}"
                         " is neither text-to-video nor CogVideoXImageToVideoPipeline's (twice the channels: the "
                         "image latents); not supported")
    lh, lw = height // spatial, width // spatial
    if cfg.patch_size_t is not None:  # CogVideoX 1.5: RoPE sliced from a fixed grid of patches
        if not cfg.use_rotary_positional_embeddings:
            raise ModelError("--model: temporal patches (patch_size_t) without rotary embeddings: no such "
                             "CogVideoX model is known; not supported")
        if lh > cfg.sample_height or lw > cfg.sample_width:
            raise ModelError(f"--height/--width {height}x{width}: this model's RoPE grid covers at most "
                             f"{cfg.sample_height * spatial}x{cfg.sample_width * spatial}")
    if cfg.use_learned_positional_embeddings and (lh, lw) != (cfg.sample_height, cfg.sample_width):
        raise ModelError(f"this model's learned positional table fixes the size to "
                         f"{cfg.sample_height * spatial}x{cfg.sample_width * spatial}; got {height}x{width}")
    return (frames - 1) // temporal + 1, lh, lw


def _encode_t5(model: str, texts: dict[str, str], length: int, device, dtype) -> dict[str, torch.Tensor]:
    try:
        from transformers import AutoTokenizer, T5EncoderModel
    except ImportError as exc:
        raise ModelError("encoding --prompt needs transformers and sentencepiece "
                         "(pip install -e '.[text]' in the checkout), or pass --prompt-embeds FILE") from exc
    try:
        tok = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
        enc = T5EncoderModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype).to(device).eval()
    except Exception as exc:
        raise ModelError(f"--model {model}: cannot load its tokenizer/text encoder ({exc}); "
                         "or pass --prompt-embeds FILE") from exc
    out = {}
    with torch.no_grad():
        for k, text in texts.items():
            ids = tok([text], padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                      return_tensors="pt").input_ids
            out[k] = enc(ids.to(device))[0].float().cpu()
    del enc
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def encode_video(vae, frames: np.ndarray, *, device, dtype, seed: int = 0) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> scaled latent ``[1, F', C, h, w]`` (a sample of the posterior, seeded)."""
    lat = sample_latent(vae, frames, device, dtype, seed)
    return (lat * vae.config.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()


@torch.no_grad()
def encode_image(vae, image: np.ndarray, *, device, dtype, seed: int = 0) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> the image's latent ``[1, 1, C, h, w]`` in ``dtype`` as CogVideoXImageToVideoPipeline
    makes it: a seeded sample of the VAE posterior of the image as a one-frame video, cast to the run's dtype, then
    times ``scaling_factor``, or divided by it where the VAE says ``invert_scale_latents`` (CogVideoX 1.5-I2V,
    trained so; its video latents are still scaled as usual)."""
    lat = sample_latent(vae, image[None], device, next(vae.parameters()).dtype, seed).to(dtype)
    lat = lat.permute(0, 2, 1, 3, 4)
    scale = vae.config.scaling_factor
    if vae.config.get("invert_scale_latents", False):
        scale = 1 / scale  # times the reciprocal, as the pipeline computes it (dividing can differ in the last bit)
    return (lat * scale).contiguous()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Scaled latent ``[1, F', C, h, w]`` -> ``uint8 [F, H, W, 3]``."""
    z = latents.permute(0, 2, 1, 3, 4).to(next(vae.parameters()).dtype) / vae.config.scaling_factor
    return to_uint8(vae.decode(z).sample[0])
