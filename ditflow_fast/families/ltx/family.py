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

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from ...errors import cannot_load
from ...guidance.controller import GuidanceController, install_processors, uninstall_processors
from ..base import FamilyBase, ModelError, refuse_foreign_vae
from ..estimate import Estimate
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


def _read_model_index(model: str) -> dict:
    local = Path(model).expanduser()
    if local.exists():
        try:
            return json.loads((local / "model_index.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"--model {model}: unreadable model_index.json ({exc})") from exc
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model))
    except Exception:  # a transformer-only repo, or offline: the subfolders decide
        return {}


class LTXFamily(FamilyBase):
    """LTX-Video text-to-video models (``LTXPipeline`` folders) for the guidance loop."""

    name = "ltx"
    label = "LTX-Video (LTXPipeline folders)"
    transformer_class, vae_class = "LTXVideoTransformer3DModel", "AutoencoderKLLTXVideo"
    text_position = "none"  # text by cross-attention: the AMF sees video tokens only
    latent_layout = "BCFHW"
    PRESETS = PRESETS

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
        try:
            from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
        except Exception as exc:  # diffusers' lazy import turns a broken dependency into a RuntimeError
            raise cannot_load(model, exc) from exc
        local = Path(model).expanduser()
        if local.exists():
            missing = [s for s in ("transformer", "vae") if not (local / s).is_dir()]
            if missing:
                raise ModelError(f"--model {model}: not an LTX diffusers folder (no {', '.join(missing)}/)")
            refuse_foreign_vae(model, LTXFamily.vae_class)
            model = str(local)
        elif model.startswith((".", "/", "~")) or model.count("/") != 1:
            raise ModelError(f"--model {model}: no such folder, and not a hub id of the form owner/name")
        cls = _read_model_index(model).get("_class_name")
        if cls is not None and cls not in _PIPELINES:
            raise ModelError(f"--model {model}: a {cls} folder; the LTX guidance loop takes text-to-video "
                             f"{' / '.join(_PIPELINES)} folders")
        try:
            transformer = LTXVideoTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
            vae = AutoencoderKLLTXVideo.from_pretrained(model, subfolder="vae", torch_dtype=dtype)
        except Exception as exc:  # hub/network/format errors come in many types
            raise cannot_load(model, exc) from exc
        geometry.check_vae(vae.config, model)
        if transformer.config.in_channels != vae.config.latent_channels * transformer.config.patch_size ** 2 \
                * transformer.config.patch_size_t:
            raise ModelError(f"--model {model}: the transformer takes {transformer.config.in_channels} channels, the "
                             f"VAE gives {vae.config.latent_channels}; only text-to-video LTX folders are supported")
        try:
            sched_cfg = dict(FlowMatchEulerDiscreteScheduler.load_config(model, subfolder="scheduler"))
        except Exception:
            sched_cfg = None  # make_sampler falls back to LTX-Video's
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
        one = torch.stack(cls.rope(transformer, latent))
        return torch.stack([one, one.clone()])

    @staticmethod
    @contextlib.contextmanager
    def emb_override(transformer, emb: torch.Tensor | None):
        """While active, every forward uses ``emb`` ``[2, 2, N, D]`` as separate query and key RoPE: a forward
        hook on ``transformer.rope`` returns ``((cos_q, sin_q), (cos_k, sin_k))`` each ``[1, N, D]`` in the stock
        tables' dtype (the gradient reaches ``emb``). Needs :meth:`install`. ``emb=None``: no change."""
        if emb is None:
            yield
            return
        if getattr(transformer, "_ditflow_guidance", None) is None:
            raise ValueError("emb_override needs the guided processors: call LTXFamily.install(transformer) first")
        if emb.dim() != 4 or emb.shape[:2] != (2, 2):
            raise ValueError(f"emb must be [2 (q, k), 2 (cos, sin), N, D], got {tuple(emb.shape)}")

        def hook(module, args, output):
            cos = output[0]
            if tuple(emb.shape[2:]) != tuple(cos.shape[1:]):
                raise ValueError(f"emb of shape {tuple(emb.shape)} does not fit this latent's RoPE "
                                 f"[2, 2, {cos.shape[1]}, {cos.shape[2]}]")
            e = emb.to(device=cos.device, dtype=cos.dtype)
            return (e[0, 0][None], e[0, 1][None]), (e[1, 0][None], e[1, 1][None])

        handle = transformer.rope.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @classmethod
    def emb_fingerprint(cls, transformer) -> str:
        """The config entries that fix the embedding's meaning, the RoPE scale, and the family name (JSON)."""
        cfg = transformer.config
        d = {k: geometry.cfg_get(cfg, k) for k in FINGERPRINT_KEYS}
        d.update(family=cls.name, rope_scale=list(ROPE_SCALE))
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def emb_kind(transformer) -> str:
        return "rope"

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

    @classmethod
    def run_until(cls, transformer, latent, text_embeds, timestep, emb=None, *, stop_after: int | None,
                  qk_blocks=(), out_blocks=(), copy_kv_blocks=()):
        """:func:`ditflow_fast.guidance.forward.run_until` with LTX's own call (:meth:`forward`)."""
        from ...guidance.forward import run_until

        return run_until(transformer, stop_after=stop_after, qk_blocks=qk_blocks, out_blocks=out_blocks,
                         copy_kv_blocks=copy_kv_blocks, n_blocks=len(transformer.transformer_blocks),
                         call=lambda: cls.forward(transformer, latent, text_embeds, timestep, emb))

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
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        g = torch.Generator(device=device).manual_seed(seed)
        lat = vae.encode(x.to(device, dtype)).latent_dist.sample(generator=g).float()
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
        video = vae.decode(z.to(p.device, p.dtype), t, return_dict=False)[0][0]  # [3, F, H, W] in [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()

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

    @staticmethod
    def estimate(config: dict, *, frames: int, height: int, width: int, guidance_block: int, bytes_per_elem: int = 2,
                 opt_mode: str = "latent", checkpointing: bool = True, offload: str = "none",
                 offload_activations: bool = False, ffn_chunks: int | None = None) -> Estimate:
        return memory.estimate(config, frames=frames, height=height, width=width, guidance_block=guidance_block,
                               bytes_per_elem=bytes_per_elem, opt_mode=opt_mode, checkpointing=checkpointing,
                               offload=offload, offload_activations=offload_activations)

    @classmethod
    def dry_run_table(cls, model: str, cfg, offload: str = "none") -> str:
        """The generic table, and what LTX adds: how its default guidance block was chosen (unverified), the text
        encoder's own peak, and the VAE decode."""
        table = super().dry_run_table(model, cfg, offload)
        return table + "\n" + memory.notes(cls.memory_config(model), cfg, offload)
