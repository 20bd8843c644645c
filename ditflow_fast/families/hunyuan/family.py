"""The HunyuanVideo family (``HunyuanVideoPipeline`` / ``HunyuanVideoTransformer3DModel``) on the seam.

What shapes this module, next to Wan and CogVideoX:

- **Blocks.** 20 dual-stream blocks (``transformer_blocks``: video and text in separate streams with their own
  projections, one joint attention) then 40 single-stream blocks (``single_transformer_blocks``: one stream of
  ``[video, text]``). The family's block list is the two in that order (``--guidance-block`` 0..59); every
  block can guide: in both kinds the video tokens lead the joint attention, the text is a **suffix**
  (``text_position = "suffix"``), and the processor (:mod:`.attention`) hands the controller the leading
  video part only.
- **RoPE** (3-D, axes 16/56/56 of the 128 head channels): ``transformer.rope(latent)`` returns ``(cos, sin)``
  ``[N, 128]`` float32 for the video tokens; emb mode replaces it with separate query and key tables through a
  forward hook on ``transformer.rope`` (as for Wan), ``[2 (q, k), 2 (cos, sin), N, 128]``.
- **Guidance-distilled.** The pipeline gives the transformer ``guidance = guidance_scale * 1000`` (an embedded
  guidance scale, 6.0 by default) and runs no unconditional pass (``true_cfg_scale`` 1). Here ``--cfg`` is that
  embedded scale (:meth:`prepare` puts it on the transformer for every forward of the run), ``guide_cfg`` is the
  identity and the loop skips the unconditional forward (:meth:`needs_uncond`). True CFG is not supported.
- **Text** (:mod:`.text`): Llama hidden states, their mask and CLIP's pooled embedding, packed in one tensor.
- **Latents** ``[B, C, F, H, W]``, scaled by the VAE's ``scaling_factor``; a causal VAE: ``4k + 1`` frames.
- **Sampler** (:mod:`.sampler`): flow-matching Euler with the pipeline's sigmas and fractional timesteps.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ...guidance.controller import install_processors, uninstall_processors
from .. import folders
from ..base import FamilyBase, ModelError, sample_latent, to_uint8
from ..rope import qk_tables, rope_override
from . import memory, presets, text
from .attention import HunyuanGuidedAttnProcessor
from .sampler import HunyuanSampler, make_scheduler

_PIPELINES = ("HunyuanVideoPipeline",)
FINGERPRINT_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "num_single_layers", "patch_size",
                    "patch_size_t", "in_channels", "rope_axes_dim", "rope_theta", "text_embed_dim")
DEFAULT_GUIDANCE = 6.0  # HunyuanVideoPipeline.__call__'s guidance_scale


def _cfg(config, key, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


class HunyuanVideoFamily(FamilyBase):
    """HunyuanVideo text-to-video (``HunyuanVideoPipeline`` folders) for the guidance loop."""

    name = "hunyuanvideo"
    label = "HunyuanVideo (HunyuanVideoPipeline folders)"
    transformer_class, vae_class = "HunyuanVideoTransformer3DModel", "AutoencoderKLHunyuanVideo"
    text_position = "suffix"
    latent_layout = "BCFHW"
    text_folders = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    PRESETS = presets.PRESETS
    lazy_classes = ("diffusers.FlowMatchEulerDiscreteScheduler", "diffusers.HunyuanVideoPipeline",
                    "transformers.LlamaModel", "transformers.CLIPTextModel", "transformers.LlamaTokenizerFast",
                    "transformers.CLIPTokenizer")

    # -- recognising and loading -----------------------------------------------------------------
    @staticmethod
    def matches(model_index: dict | None, transformer_class_name: str | None) -> bool:
        if transformer_class_name == "HunyuanVideoTransformer3DModel":
            return True
        return (model_index or {}).get("_class_name") in _PIPELINES

    @classmethod
    def load(cls, model: str, dtype: torch.dtype, vae_dtype: torch.dtype = torch.float32) -> dict:
        """On the CPU: the transformer in ``dtype``, the VAE in ``vae_dtype`` (float32, as the Wan family decodes);
        :class:`ModelError` naming ``--model``. Refuses image-conditioned and non-distilled transformers."""
        with folders.load_errors(model):
            from diffusers import (
                AutoencoderKLHunyuanVideo,
                FlowMatchEulerDiscreteScheduler,
                HunyuanVideoTransformer3DModel,
            )
        model = folders.checked_folder(model, "a HunyuanVideo", cls.vae_class, hub_id=False)
        with folders.load_errors(model):
            tr = HunyuanVideoTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
            vae = AutoencoderKLHunyuanVideo.from_pretrained(model, subfolder="vae", torch_dtype=vae_dtype)
        sched_cfg = folders.scheduler_config(FlowMatchEulerDiscreteScheduler, model)  # None: the public folder's
        cls.check_transformer(tr.config, model)
        return dict(transformer=tr.eval().requires_grad_(False), transformer_2=None,
                    vae=vae.eval().requires_grad_(False), scheduler_config=sched_cfg, boundary_ratio=None,
                    expand_timesteps=False)

    @staticmethod
    def check_transformer(config, model: str = "") -> None:
        """Only the text-to-video, guidance-distilled transformer is supported."""
        where = f"--model {model}: " if model else ""
        if _cfg(config, "image_condition_type") is not None:
            raise ModelError(f"{where}an image-conditioned HunyuanVideo transformer (image_condition_type "
                             f"{_cfg(config, 'image_condition_type')!r}); only text-to-video is supported")
        if not _cfg(config, "guidance_embeds", True):
            raise ModelError(f"{where}a HunyuanVideo transformer without guidance embedding (guidance_embeds false); "
                             "only the guidance-distilled model (whose guidance is an input) is supported")

    # -- guided attention ------------------------------------------------------------------------
    @staticmethod
    def blocks(transformer) -> list:
        """Dual-stream blocks, then single-stream blocks: the indices ``--guidance-block`` takes."""
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    @classmethod
    def install(cls, transformer, controller=None):
        """A :class:`HunyuanGuidedAttnProcessor` on every block's ``attn`` and an output hook per block (both kinds
        return ``(video, text)``: MOFT/SMM record the video part). Idempotent."""
        cls.uninstall(transformer)
        return install_processors(transformer, cls.blocks(transformer), HunyuanGuidedAttnProcessor,
                                  lambda output: output[0], controller, attn="attn")

    @classmethod
    def uninstall(cls, transformer) -> None:
        """The stock processors back, and the run's embedded guidance scale (:meth:`prepare`) dropped."""
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

        uninstall_processors(transformer, cls.blocks(transformer), HunyuanVideoAttnProcessor2_0, attn="attn")
        transformer.__dict__.pop("_ditflow_embedded_guidance", None)

    # -- positional embeddings -------------------------------------------------------------------
    @staticmethod
    def initial_emb(transformer, latent: torch.Tensor) -> torch.Tensor:
        """``[2 (q, k), 2 (cos, sin), N, head_dim]`` float32 from the model's RoPE for this latent (hooks bypassed)."""
        return qk_tables(*transformer.rope.forward(latent))

    @staticmethod
    def emb_override(transformer, emb: torch.Tensor | None):
        """While active, every forward uses ``emb`` ``[2, 2, N, d]`` as separate query and key RoPE, handed to the
        blocks as ``[N, d]`` tables (:func:`~ditflow_fast.families.rope.rope_override`). Needs :meth:`install`."""
        return rope_override(transformer, emb, "HunyuanVideoFamily.install", token_axis=0)

    @classmethod
    def emb_fingerprint(cls, transformer) -> str:
        d = {k: _cfg(transformer.config, k) for k in FINGERPRINT_KEYS}
        d["rope_axes_dim"] = list(d["rope_axes_dim"]) if d["rope_axes_dim"] is not None else None
        d["family"] = cls.name
        return json.dumps(d, sort_keys=True)

    # -- forwards --------------------------------------------------------------------------------
    @staticmethod
    def prepare(transformer, cfg) -> dict:
        """The run's embedded guidance scale (``--cfg``, default 6.0), read by every forward of the run."""
        scale = float(cfg.cfg_scale if cfg.cfg_scale is not None else DEFAULT_GUIDANCE)
        transformer._ditflow_embedded_guidance = scale
        return {"embedded_guidance": scale}

    @staticmethod
    def needs_uncond(cfg) -> bool:
        return False  # guidance-distilled: the guidance is an input of the one forward

    @classmethod
    def forward(cls, transformer, latent: torch.Tensor, text_embeds: torch.Tensor, timestep, emb=None) -> torch.Tensor:
        """One call of the transformer as ``HunyuanVideoPipeline`` makes it (timestep float32, the prompt's three
        tensors and ``guidance = scale * 1000`` in the transformer's dtype); returns ``[B, C, F, H, W]``."""
        embeds, mask, pooled = text.unpack(text_embeds, int(transformer.config.pooled_projection_dim))
        b = latent.shape[0]
        if embeds.shape[0] not in (1, b):
            raise ValueError(f"{embeds.shape[0]} prompts for a batch of {b} latents")
        embeds, mask, pooled = (t.expand(b, *t.shape[1:]) for t in (embeds, mask, pooled))
        t = torch.as_tensor(timestep, device=latent.device).reshape(-1).expand(b).to(torch.float32)
        dtype = transformer.dtype
        scale = getattr(transformer, "_ditflow_embedded_guidance", DEFAULT_GUIDANCE)
        guidance = torch.tensor([scale] * b, dtype=dtype, device=latent.device) * 1000.0
        with cls.emb_override(transformer, emb):
            return transformer(hidden_states=latent, timestep=t, encoder_hidden_states=embeds.to(dtype),
                               encoder_attention_mask=mask.to(dtype), pooled_projections=pooled.to(dtype),
                               guidance=guidance, return_dict=False)[0]

    # -- sizes -----------------------------------------------------------------------------------
    @staticmethod
    def token_grid(transformer, latent: torch.Tensor) -> tuple[int, int, int]:
        p, pt = int(transformer.config.patch_size), int(transformer.config.patch_size_t)
        _, _, f, h, w = latent.shape
        return f // pt, h // p, w // p

    @classmethod
    def geometry(cls, transformer, vae, frames: int, height: int, width: int) -> tuple:
        """``(1, C, F', H/8, W/8)``, or :class:`ModelError`: ``4k + 1`` frames, sizes multiples of 16."""
        temporal = int(_cfg(vae.config, "temporal_compression_ratio", None) or 4)
        spatial = int(_cfg(vae.config, "spatial_compression_ratio", None) or 8)
        p = int(_cfg(transformer.config, "patch_size", None) or 2)
        cls.check_frames(frames, temporal)
        s = spatial * p
        if height % s or width % s:
            raise ModelError(f"--height/--width {height}x{width}: must be multiples of {s}x{s} for this model "
                             f"(VAE x{spatial}, patch {p}x{p})")
        z = int(_cfg(vae.config, "latent_channels", None) or 16)
        return 1, z, (frames - 1) // temporal + 1, height // spatial, width // spatial

    @staticmethod
    def check_frames(frames: int, temporal: int = 4) -> None:
        if frames < 1 or (frames - 1) % temporal:
            lo = max(1, (frames - 1) // temporal * temporal + 1)
            near = f"{lo} or {lo + temporal}" if lo <= frames else f"{lo}"
            raise ModelError(f"--frames {frames}: the HunyuanVideo VAE takes {temporal}k+1 frames; nearest: {near}")

    block_count = staticmethod(presets.block_count)
    defaults = staticmethod(presets.defaults)

    # -- VAE -------------------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def encode_video(cls, vae, frames: np.ndarray, device, dtype, seed: int = 0) -> torch.Tensor:
        """``uint8 [F, H, W, 3]`` -> ``[1, C, F', h, w]`` float32: a seeded sample of the posterior times the
        VAE's ``scaling_factor`` (the pipeline divides by it before decoding)."""
        f, h, w, _ = frames.shape
        cls.check_frames(f, int(vae.config.temporal_compression_ratio))
        return sample_latent(vae, frames, device, dtype, seed).float() * float(vae.config.scaling_factor)

    @staticmethod
    @torch.no_grad()
    def decode_latents(vae, latent: torch.Tensor) -> np.ndarray:
        """``[1, C, F', h, w]`` -> ``uint8 [F, H, W, 3]`` (``latent / scaling_factor``, as the pipeline decodes)."""
        p = next(vae.parameters())
        return to_uint8(vae.decode(latent.to(p.device, p.dtype) / vae.config.scaling_factor).sample[0])

    # -- sampler ---------------------------------------------------------------------------------
    @staticmethod
    def make_sampler(scheduler, cfg) -> HunyuanSampler:
        """``scheduler``: a scheduler object (used as it is) or a folder's config; ``--flow-shift`` overrides."""
        if scheduler is None or isinstance(scheduler, dict) or not hasattr(scheduler, "step"):
            scheduler = make_scheduler(scheduler, getattr(cfg, "flow_shift", None))
        return HunyuanSampler(scheduler)

    @staticmethod
    def guide_cfg(cond, uncond, scale: float, t, cfg):
        return cond  # the guidance is embedded in the forward (prepare); no unconditional pass

    # -- text ------------------------------------------------------------------------------------
    @staticmethod
    def text_spec(transformer) -> tuple[int | None, int]:
        """Any length; width ``text_embed_dim + 1 + pooled_projection_dim`` (:mod:`.text`'s packing)."""
        c = transformer.config
        return None, int(c.text_embed_dim) + 1 + int(c.pooled_projection_dim)

    @staticmethod
    def prompt_length(transformer) -> int:
        return text.MAX_SEQUENCE_LENGTH

    @staticmethod
    def encode_prompts(model: str, texts: dict[str, str], transformer, device, dtype) -> dict:
        return text.encode_prompts(model, texts, device, dtype)

    @staticmethod
    def pipeline_prompt(pipe, prompt: str, transformer, device, dtype) -> torch.Tensor:
        return text.pipeline_prompt(pipe, prompt, device, dtype)

    # -- memory (--dry-run) ----------------------------------------------------------------------
    memory_config = staticmethod(memory.memory_config)

    dry_run_notes = staticmethod(memory.dry_run_notes)
    estimate = staticmethod(memory.estimate)
