"""The LTX-Video family for the guidance loop: loading, guided self-attention, RoPE, VAE, sampler.

What shapes this module (diffusers' ``LTXPipeline`` / ``LTXVideoTransformer3DModel``):

- **Latents.** The family's latent is ``[B, C, F, H, W]`` (``latent_layout = "BCFHW"``), normalised as the
  pipeline does (``(z - latents_mean) * scaling_factor / latents_std``). The transformer takes tokens
  ``[B, F*H*W, C]`` (1x1 patches, ``LTXPipeline._pack_latents``): :meth:`LTXFamily.forward` packs before the
  call and unpacks the prediction, so the loop and the sampler never see tokens.
- **Attention.** Text enters through cross-attention (``attn2``) only: self-attention (``attn1``) sees video
  tokens only (``text_position = "none"``, the AMF gets ``text_tokens = 0``).
- **RoPE.** ``transformer.rope`` makes ``(cos, sin)`` ``[B, N, D]`` float32 over the full width
  ``D = heads * head_dim`` from the token grid and ``rope_interpolation_scale = (8 / frame_rate, 32, 32)``
  (the pipeline's, frame rate 25). Emb mode optimises separate query/key tables ``[2, 2, N, D]`` handed to the
  blocks by a forward hook on ``transformer.rope``, as the Wan family does.
- **Text.** T5 through the pipeline's own ``encode_prompt``, cut to each prompt's real tokens (see
  :mod:`.text`: the same cross-attention as the pipeline's padded tokens with their mask).
- **Sampler.** Euler on flow-matching sigmas with the pipeline's token-count shift (:mod:`.sampler`).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ...guidance.controller import GuidanceController, install_processors, uninstall_processors
from .. import folders
from ..base import FamilyBase, ModelError, sample_latent, to_uint8
from ..rope import qk_tables, rope_override
from . import geometry, memory, presets
from .attention import LTXGuidedAttnProcessor
from .presets import FRAME_RATE, PRESETS, SPATIAL, TEMPORAL
from .sampler import LTXSampler, make_scheduler

_PIPELINES = ("LTXPipeline",)
_TRANSFORMERS = ("LTXVideoTransformer3DModel",)
FINGERPRINT_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "patch_size", "patch_size_t",
                    "in_channels", "caption_channels")
# The pipeline's RoPE coordinates: frames scaled by temporal compression / frame rate, pixels by 32.
ROPE_SCALE = (TEMPORAL / FRAME_RATE, SPATIAL, SPATIAL)


class LTXFamily(FamilyBase):
    """LTX-Video text-to-video models (``LTXPipeline`` folders) for the guidance loop."""

    name = "ltx"
    label = "LTX-Video (LTXPipeline folders)"
    transformer_class, vae_class = "LTXVideoTransformer3DModel", "AutoencoderKLLTXVideo"
    text_position = "none"  # text by cross-attention: the AMF sees video tokens only
    latent_layout = "BCFHW"
    PRESETS = PRESETS
    lazy_classes = ("diffusers.FlowMatchEulerDiscreteScheduler", "diffusers.LTXPipeline", "transformers.AutoTokenizer",
                    "transformers.T5TokenizerFast", "transformers.T5EncoderModel")

    # -- recognising and loading -----------------------------------------------------------------
    @staticmethod
    def matches(model_index: dict | None, transformer_class_name: str | None) -> bool:
        if transformer_class_name in _TRANSFORMERS:
            return True
        if not model_index:
            return False
        entry = model_index.get("transformer")
        return model_index.get("_class_name") in _PIPELINES or (
            isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] in _TRANSFORMERS)

    @staticmethod
    def load(model: str, dtype: torch.dtype) -> dict:
        """Components on the CPU: ``transformer`` and ``vae`` in ``dtype`` (as ``LTXPipeline`` runs them),
        ``scheduler_config`` (None if the folder has none: LTX-Video's is used). :class:`ModelError` names
        ``--model``."""
        with folders.load_errors(model):
            from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
        model = folders.checked_folder(model, "an LTX", LTXFamily.vae_class)
        folders.refuse_other_pipeline(model, folders.read_model_index(model), _PIPELINES, "LTX")
        with folders.load_errors(model):
            transformer = LTXVideoTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
            vae = AutoencoderKLLTXVideo.from_pretrained(model, subfolder="vae", torch_dtype=dtype)
        geometry.check_vae(vae.config, model)
        if transformer.config.in_channels != vae.config.latent_channels * transformer.config.patch_size ** 2 \
                * transformer.config.patch_size_t:
            raise ModelError(f"--model {model}: the transformer takes {transformer.config.in_channels} channels, the "
                             f"VAE gives {vae.config.latent_channels}; only text-to-video LTX folders are supported")
        sched_cfg = folders.scheduler_config(FlowMatchEulerDiscreteScheduler, model)  # None: make_sampler's LTX-Video's
        transformer.eval().requires_grad_(False)
        return dict(transformer=transformer, transformer_2=None, vae=vae.eval().requires_grad_(False),
                    scheduler_config=sched_cfg, boundary_ratio=None, expand_timesteps=False)

    # -- guided attention ------------------------------------------------------------------------
    @staticmethod
    def blocks(transformer) -> list:
        return list(transformer.transformer_blocks)

    @classmethod
    def install(cls, transformer, controller: GuidanceController | None = None) -> GuidanceController:
        """An :class:`LTXGuidedAttnProcessor` on every block's ``attn1`` and an output hook per block (MOFT/SMM
        records; an LTX block returns its hidden states ``[B, N, D]``, video tokens only). Idempotent."""
        cls.uninstall(transformer)
        return install_processors(transformer, transformer.transformer_blocks, LTXGuidedAttnProcessor,
                                  lambda output: output, controller)

    @staticmethod
    def uninstall(transformer) -> None:
        from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

        uninstall_processors(transformer, transformer.transformer_blocks, LTXVideoAttnProcessor)

    # -- positional embeddings -------------------------------------------------------------------
    @classmethod
    def rope(cls, transformer, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[N, D]`` float32: the tables ``transformer.rope`` makes for this latent
        (``[B, C, F, H, W]``; only its shape is read), hooks bypassed."""
        f, h, w = cls.token_grid(transformer, latent)
        cos, sin = transformer.rope.forward(latent[:1], f, h, w, ROPE_SCALE)
        return cos[0].float(), sin[0].float()

    @classmethod
    def initial_emb(cls, transformer, latent: torch.Tensor) -> torch.Tensor:
        """``[2 (q, k), 2 (cos, sin), N, D]`` float32, queries and keys both from the model's RoPE."""
        return qk_tables(*cls.rope(transformer, latent))

    @staticmethod
    def emb_override(transformer, emb: torch.Tensor | None):
        """While active, every forward uses ``emb`` ``[2, 2, N, D]`` as separate query and key RoPE, handed to the
        blocks as ``[1, N, D]`` tables (:func:`~ditflow_fast.families.rope.rope_override`). Needs :meth:`install`."""
        return rope_override(transformer, emb, "LTXFamily.install(transformer)", token_axis=1, width="D")

    @classmethod
    def emb_fingerprint(cls, transformer) -> str:
        """The config entries that fix the embedding's meaning, the RoPE scale, and the family name (JSON)."""
        cfg = transformer.config
        d = {k: geometry.cfg_get(cfg, k) for k in FINGERPRINT_KEYS}
        d.update(family=cls.name, rope_scale=list(ROPE_SCALE))
        return json.dumps(d, sort_keys=True)

    # -- forwards --------------------------------------------------------------------------------
    @classmethod
    def forward(cls, transformer, latent: torch.Tensor, text_embeds: torch.Tensor, timestep, emb=None) -> torch.Tensor:
        """One call of the LTX transformer as ``LTXPipeline`` makes it: the latent packed to tokens, ``t`` per
        batch element (float32), the pipeline's RoPE scale; returns the prediction ``[B, C, F, H, W]``. No text
        mask: the prompts hold their real tokens only (:mod:`.text`). ``emb``: separate q/k RoPE for this call."""
        grid = cls.token_grid(transformer, latent)
        tokens = geometry.pack(latent, transformer.config)
        t = torch.as_tensor(timestep, device=latent.device, dtype=torch.float32).reshape(-1)
        if t.numel() not in (1, latent.shape[0]):
            raise ValueError(f"timestep of shape {tuple(t.shape)} for a batch of {latent.shape[0]}")
        t = t.expand(latent.shape[0])
        with cls.emb_override(transformer, emb):
            out = transformer(hidden_states=tokens, encoder_hidden_states=text_embeds, timestep=t,
                              encoder_attention_mask=None, num_frames=grid[0], height=grid[1], width=grid[2],
                              rope_interpolation_scale=ROPE_SCALE, return_dict=False)[0]
        return geometry.unpack(out, grid, transformer.config)

    # -- sizes -----------------------------------------------------------------------------------
    @staticmethod
    def token_grid(transformer, latent: torch.Tensor) -> tuple[int, int, int]:
        """``(F', h, w)`` tokens of ``latent`` ``[B, C, F, H, W]`` (1x1 patches: the latent grid itself)."""
        p, pt = transformer.config.patch_size, transformer.config.patch_size_t
        _, _, f, h, w = latent.shape
        return f // pt, h // p, w // p

    latent_shape = staticmethod(geometry.latent_shape)
    check_frames = staticmethod(geometry.check_frames)
    defaults = staticmethod(presets.defaults)

    @classmethod
    def geometry(cls, transformer, vae, frames: int, height: int, width: int) -> tuple:
        return geometry.latent_shape(vae.config, transformer.config, frames, height, width)

    # -- VAE -------------------------------------------------------------------------------------
    @staticmethod
    def _stats(vae, device):
        return vae.latents_mean.to(device, torch.float32), vae.latents_std.to(device, torch.float32)

    @classmethod
    @torch.no_grad()
    def encode_video(cls, vae, frames: np.ndarray, device, dtype, seed: int = 0) -> torch.Tensor:
        """``uint8 [F, H, W, 3]`` -> normalised latent ``[1, C, F', h, w]`` float32: a seeded sample of the
        posterior, normalised as ``LTXPipeline._normalize_latents``."""
        from diffusers import LTXPipeline

        f, h, w, _ = frames.shape
        geometry.latent_shape(vae.config, {}, f, h, w)  # frame count / size checks
        lat = sample_latent(vae, frames, device, dtype, seed).float()
        return LTXPipeline._normalize_latents(lat, *cls._stats(vae, lat.device), vae.config.scaling_factor)

    @classmethod
    @torch.no_grad()
    def decode_latents(cls, vae, latent: torch.Tensor) -> np.ndarray:
        """Normalised latent ``[1, C, F', h, w]`` -> ``uint8 [F, H, W, 3]``, as ``LTXPipeline`` decodes with its
        defaults (denormalised; a timestep-conditioned decoder gets ``decode_timestep`` 0 and no noise)."""
        from diffusers import LTXPipeline

        p = next(vae.parameters())
        z = LTXPipeline._denormalize_latents(latent.float(), *cls._stats(vae, latent.device), vae.config.scaling_factor)
        t = torch.zeros(z.shape[0], device=p.device, dtype=p.dtype) if vae.config.timestep_conditioning else None
        return to_uint8(vae.decode(z.to(p.device, p.dtype), t, return_dict=False)[0][0])

    # -- text ------------------------------------------------------------------------------------
    @staticmethod
    def text_spec(transformer) -> tuple[int | None, int]:
        """``(None, caption_channels)``: any length up to 128 real T5 tokens, of T5's width."""
        return None, int(transformer.config.caption_channels)

    @staticmethod
    def prompt_length(transformer) -> int:
        return presets.TEXT_LEN  # LTXPipeline.__call__'s max_sequence_length

    @staticmethod
    def encode_prompts(model: str, texts: dict[str, str], transformer, device, dtype) -> dict:
        from .text import encode_prompts_t5

        return encode_prompts_t5(model, texts, device, dtype)

    @staticmethod
    def pipeline_prompt(pipe, text: str, transformer, device, dtype) -> torch.Tensor:
        """A caller's ``LTXPipeline``: its own ``encode_prompt`` (128 tokens), cut to the real tokens by its mask."""
        from .text import encode_with

        return encode_with(pipe, text, device, dtype)

    # -- sampler ---------------------------------------------------------------------------------
    @staticmethod
    def make_sampler(scheduler, cfg) -> LTXSampler:
        """``scheduler``: a scheduler object (used as it is) or a folder's config (or None: LTX-Video's). The shift
        follows the token count of ``cfg``'s frames and size, as the pipeline's does."""
        if getattr(cfg, "flow_shift", None) is not None:
            raise ValueError("--flow-shift: LTX shifts its sigmas by the video's token count (LTXPipeline's rule); "
                             "the option is Wan's")
        if scheduler is None or isinstance(scheduler, dict) or not hasattr(scheduler, "step"):
            scheduler = make_scheduler(scheduler)
        frames, height, width = cfg.frames, cfg.height, cfg.width
        seq_len = ((frames - 1) // TEMPORAL + 1) * (height // SPATIAL) * (width // SPATIAL)
        return LTXSampler(scheduler, seq_len)

    @staticmethod
    def guide_cfg(cond, uncond, scale: float, t, cfg):
        """LTXPipeline's classifier-free guidance (``guidance_rescale`` 0): ``uncond + scale * (cond - uncond)``."""
        return uncond + scale * (cond - uncond)

    # -- memory (--dry-run) ----------------------------------------------------------------------
    memory_config = staticmethod(memory.memory_config)

    estimate = staticmethod(memory.estimate)
    dry_run_notes = staticmethod(memory.notes)
