"""The Wan2.1 / Wan2.2 family for the guidance loop: loading, guided self-attention, RoPE, VAE, sampler.

Everything Wan-specific lives in :class:`WanFamily`; the loop stays family-agnostic. Differences
from CogVideoX that shape this module:

- **Attention.** Wan's self-attention (``block.attn1``) sees video tokens only; text enters through
  cross-attention (``attn2``), so ``text_tokens = 0`` and every self-attention token is a video
  token. Q/K/V are ``[B, N, H, d]`` (diffusers' ``WanAttnProcessor``); the controller's records are
  the transposed views ``[1, H, N, d]`` (no copy), the layout :mod:`ditflow_fast.families.cogvideox.attention`
  uses for CogVideoX.
- **RoPE.** ``transformer.rope(latent)`` returns ``(cos, sin)`` ``[1, N, 1, d]`` (float32, each
  frequency repeated twice along ``d``; the rotation reads ``cos[..., 0::2]`` and ``sin[..., 1::2]``,
  so the other halves of an optimised table get zero gradient). Separate query/key RoPE are passed
  to the blocks by a forward hook on ``transformer.rope`` (:meth:`WanFamily.emb_override`).
- **Latents** are ``[B, C, F, H, W]`` (``latent_layout = "BCFHW"``), normalised per channel with
  the VAE's ``latents_mean`` / ``latents_std`` as ``WanPipeline`` does, not by a scaling factor.
- **Sampler.** UniPC multistep on flow sigmas; it keeps a history of model outputs, which
  :meth:`WanFamily.scheduler_state` / :meth:`WanFamily.load_scheduler_state` save and restore so a
  resumed run is bit-identical.
- **Wan2.2 A14B** has two experts: ``transformer`` for timesteps ``>= boundary_ratio * 1000``,
  ``transformer_2`` below (:meth:`WanFamily.expert_for`). **TI2V-5B** takes one timestep per token
  (``expand_timesteps``) and a 16x-spatial VAE with 48 latent channels.
- **Image-to-video** (``WanImageToVideoPipeline`` folders; :mod:`.image`): Wan2.1-I2V and Wan2.2-I2V-A14B take the
  mask and image latents concatenated in channels (Wan2.1 also CLIP image tokens in cross-attention), TI2V-5B a
  clean first latent frame at timestep 0; :meth:`WanFamily.image_condition` computes them, :meth:`WanFamily.forward`
  takes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...guidance.controller import GuidanceController, install_processors, uninstall_processors
from .. import folders
from ..base import FamilyBase, ImageCondition, ModelError, sample_latent, to_uint8
from ..rope import qk_tables, rope_override
from . import chunking, geometry, memory, presets
from . import image as i2v
from .attention import WanGuidedAttnProcessor
from .presets import PRESETS, _cfg_get, transformer_params  # noqa: F401 - re-exported
from .sampler import WanSampler, load_scheduler_state, scheduler_state

_PIPELINES = ("WanPipeline", "WanVideoToVideoPipeline", "WanImageToVideoPipeline")
_TRANSFORMERS = ("WanTransformer3DModel",)
FINGERPRINT_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "patch_size", "in_channels",
                    "rope_max_seq_len", "text_dim")


def _has_component(model_index: dict, name: str) -> bool:
    entry = model_index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


class WanFamily(FamilyBase):
    """Wan2.1 / Wan2.2 text- and image-to-video models (``WanPipeline``, ``WanImageToVideoPipeline`` folders) for
    the guidance loop."""

    name = "wan"
    label = "Wan2.1/2.2 (WanPipeline, WanImageToVideoPipeline folders)"
    transformer_class, vae_class = "WanTransformer3DModel", "AutoencoderKLWan"
    text_position = "none"
    text_tokens = 0  # text enters by cross-attention: the AMF sees video tokens only
    latent_layout = "BCFHW"
    PRESETS = PRESETS
    lazy_classes = ("diffusers.UniPCMultistepScheduler", "diffusers.VideoProcessor", "transformers.AutoTokenizer",
                    "transformers.T5TokenizerFast", "transformers.UMT5EncoderModel", "transformers.CLIPVisionModel",
                    "transformers.CLIPImageProcessor")

    # -- recognising and loading -----------------------------------------------------------------
    @staticmethod
    def matches(model_index: dict | None, transformer_class_name: str | None) -> bool:
        """A Wan folder: WanPipeline (Wan2.1, Wan2.2 A14B with ``transformer_2``, TI2V-5B),
        WanVideoToVideoPipeline or WanImageToVideoPipeline (Wan2.1-I2V, Wan2.2-I2V-A14B), or a bare
        WanTransformer3DModel."""
        if transformer_class_name in _TRANSFORMERS:
            return True
        if not model_index:
            return False
        if model_index.get("_class_name") in _PIPELINES:
            return True
        return any(isinstance(model_index.get(k), (list, tuple)) and len(model_index[k]) == 2
                   and model_index[k][1] in _TRANSFORMERS for k in ("transformer", "transformer_2"))

    @staticmethod
    def load(model: str, dtype: torch.dtype, vae_dtype: torch.dtype = torch.float32) -> dict:
        """Components on the CPU: ``transformer`` (and ``transformer_2`` for two-expert Wan2.2, else
        None) in ``dtype``, ``vae`` (AutoencoderKLWan) in ``vae_dtype`` (float32 by default, as
        diffusers recommends for Wan decoding quality), ``scheduler_config`` (None if the folder has no
        scheduler/), ``boundary_ratio`` (None without a second expert), ``expand_timesteps``; for a transformer
        taking CLIP image tokens (Wan2.1-I2V) also ``image_encoder`` (``CLIPVisionModel`` in float32, as diffusers'
        example and the Wan team run it) and ``image_processor`` (``CLIPImageProcessor``).
        Raises :class:`ModelError` naming ``--model``."""
        with folders.load_errors(model):
            from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        model = folders.checked_folder(model, "a Wan", WanFamily.vae_class)
        index = folders.read_model_index(model)
        folders.refuse_other_pipeline(model, index, _PIPELINES, "Wan")
        two = WanFamily.has_second_expert(model, index)
        subs = ("transformer", "transformer_2") if two else ("transformer",)
        with folders.load_errors(model):  # the configs first: a transformer of another kind is refused unloaded
            configs = [WanTransformer3DModel.load_config(model, subfolder=s) for s in subs]
            vae_config = AutoencoderKLWan.load_config(model, subfolder="vae")
        for c in configs:
            i2v.check_transformer(model, c, vae_config)
        if len({i2v.image_model(c) for c in configs}) > 1:
            raise ModelError(f"--model {model}: one expert is an image-to-video transformer, the other not")
        with folders.load_errors(model):
            transformer = WanTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
            transformer_2 = (WanTransformer3DModel.from_pretrained(model, subfolder="transformer_2", torch_dtype=dtype)
                             if two else None)
            vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae", torch_dtype=vae_dtype)
        sched_cfg = folders.scheduler_config(UniPCMultistepScheduler, model)  # None: make_scheduler's Wan defaults
        experts = [t for t in (transformer, transformer_2) if t is not None]
        boundary = index.get("boundary_ratio")
        expand = bool(index.get("expand_timesteps", False))
        for t in experts:
            t.eval().requires_grad_(False)
            t._ditflow_expand_timesteps = expand  # read by WanFamily.forward
        out = dict(transformer=transformer, transformer_2=transformer_2, vae=vae.eval().requires_grad_(False),
                   scheduler_config=sched_cfg, boundary_ratio=None if transformer_2 is None else boundary,
                   expand_timesteps=expand)
        if transformer.config.image_dim is not None:
            out.update(WanFamily._load_image_encoder(model))
        return out

    @staticmethod
    def _load_image_encoder(model: str) -> dict:
        """``image_encoder`` (float32, on the CPU: image_condition moves it to the device for its call only) and
        ``image_processor`` of a Wan2.1-I2V folder."""
        with folders.load_errors(model):
            from transformers import CLIPImageProcessor, CLIPVisionModel
        local = Path(model).expanduser()
        if local.exists():
            missing = [s for s in ("image_encoder", "image_processor") if not (local / s).is_dir()]
            if missing:
                raise ModelError(f"--model {model}: its transformer takes CLIP image tokens (image_dim), but the "
                                 f"folder has no {', '.join(s + '/' for s in missing)}")
        with folders.load_errors(model):
            encoder = CLIPVisionModel.from_pretrained(model, subfolder="image_encoder", torch_dtype=torch.float32)
            processor = CLIPImageProcessor.from_pretrained(model, subfolder="image_processor")
        return dict(image_encoder=encoder.eval().requires_grad_(False), image_processor=processor)

    @staticmethod
    def has_second_expert(model: str, index: dict | None = None) -> bool:
        """Wan2.2 A14B's layout: a non-null ``transformer_2`` in ``model_index.json`` (local or hub), or,
        without an index, a ``transformer_2/`` folder."""
        index = folders.read_model_index(model) if index is None else index
        if "transformer_2" in index:
            return _has_component(index, "transformer_2")
        local = Path(model).expanduser()
        return local.exists() and (local / "transformer_2").is_dir()

    # -- guided attention ------------------------------------------------------------------------
    @staticmethod
    def blocks(transformer) -> list:
        return list(transformer.blocks)

    @classmethod
    def install(cls, transformer, controller: GuidanceController | None = None) -> GuidanceController:
        """A :class:`WanGuidedAttnProcessor` on every block's ``attn1`` and an output hook per block
        (MOFT/SMM records); returns the controller (fresh unless given: pass the same one to both
        experts). Idempotent. Kept where guidance.controller.controller_of looks (``_ditflow_guidance``)."""
        cls.uninstall(transformer)
        # a Wan block returns its hidden states [B, N, D], video tokens only
        return install_processors(transformer, transformer.blocks, WanGuidedAttnProcessor, lambda output: output,
                                  controller)

    @staticmethod
    def uninstall(transformer) -> None:
        """Remove what :meth:`install` added; the stock ``WanAttnProcessor`` goes back on ``attn1``."""
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        uninstall_processors(transformer, transformer.blocks, WanAttnProcessor)

    # -- positional embeddings -------------------------------------------------------------------
    @staticmethod
    def rope(transformer, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[F'*h*w, head_dim]`` float32: the tables ``transformer.rope`` makes
        for this latent (``[B, C, F, H, W]``; only its shape is read). Hooks are bypassed, so an active
        :meth:`emb_override` does not change the answer."""
        cos, sin = transformer.rope.forward(latent)
        return cos[0, :, 0].float(), sin[0, :, 0].float()

    @classmethod
    def initial_emb(cls, transformer, latent: torch.Tensor) -> torch.Tensor:
        """``[2 (q, k), 2 (cos, sin), N, head_dim]`` float32, queries and keys both from the model's RoPE."""
        return qk_tables(*cls.rope(transformer, latent))

    @staticmethod
    def emb_override(transformer, emb: torch.Tensor | None):
        """While active, every forward uses ``emb`` ``[2, 2, N, d]`` as separate query and key RoPE, handed to the
        blocks as ``[1, N, 1, d]`` tables (:func:`~ditflow_fast.families.rope.rope_override`). Needs :meth:`install`."""
        return rope_override(transformer, emb, "WanFamily.install(transformer)", token_axis=1)

    @classmethod
    def emb_fingerprint(cls, transformer) -> str:
        """The config entries that fix the embedding's meaning, with the family name (JSON)."""
        cfg = transformer.config
        d = {k: _cfg_get(cfg, k) for k in FINGERPRINT_KEYS}
        d["patch_size"] = list(d["patch_size"]) if d["patch_size"] is not None else None
        d["family"] = cls.name
        return json.dumps(d, sort_keys=True)

    # -- forwards --------------------------------------------------------------------------------
    @staticmethod
    def timestep_input(transformer, latent: torch.Tensor, timestep, expand_timesteps: bool | None = None,
                       clean_frames: int = 0):
        """The ``timestep`` argument ``WanPipeline`` gives the transformer: ``t`` per batch element, or,
        with ``expand_timesteps`` (TI2V-5B), ``t`` per video token ``[B, F'*h*w]`` float32; ``clean_frames``:
        that many first latent frames are clean (TI2V image-to-video), their tokens get 0, as the pipeline's
        ``first_frame_mask`` gives them (per-token timesteps then, whatever ``expand_timesteps``)."""
        if expand_timesteps is None:
            expand_timesteps = getattr(transformer, "_ditflow_expand_timesteps", False)
        b = latent.shape[0]
        t = torch.as_tensor(timestep, device=latent.device)
        if t.dim() == 2:  # already per token
            return t
        if t.dim() == 1 and t.numel() not in (1, b):
            raise ValueError(f"timestep of shape {tuple(t.shape)} for a batch of {b}")
        t = t.reshape(-1).expand(b)  # one per batch element
        if not expand_timesteps and not clean_frames:
            return t
        f, h, w = WanFamily.token_grid(transformer, latent)
        # The pipeline: (mask[0][0][:, ::2, ::2] * t).flatten() with a float32 mask, per batch element: ones, or
        # zeros on the clean first frame(s).
        mask = torch.ones(b, f, h * w, dtype=torch.float32, device=latent.device)
        mask[:, :clean_frames] = 0
        return mask.flatten(1) * t[:, None]

    @classmethod
    def forward(cls, transformer, latent: torch.Tensor, text_embeds: torch.Tensor, timestep, emb=None, *,
                expand_timesteps: bool | None = None, condition: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None, first_frame: torch.Tensor | None = None) -> torch.Tensor:
        """One call of the Wan transformer in its own signature; returns the prediction ``[B, C, F, H, W]``
        (``C`` = the latent's channels). ``emb`` (``[2, 2, N, d]``): separate q/k RoPE for this call
        (:meth:`emb_override`). The image inputs (:meth:`image_condition`, module :mod:`.image`), as
        ``WanImageToVideoPipeline`` gives them: ``condition`` ``[1, 4 + z, >= F', h, w]`` (mask and image latents,
        concatenated after the latent in channels), ``image_embeds`` ``[1, n, image_dim]`` (CLIP tokens, as
        ``encoder_hidden_states_image``: cross-attention only), ``first_frame`` ``[1, z, k, h, w]`` (TI2V: the
        first ``k`` latent frames replaced by it, clean, their tokens at timestep 0)."""
        x, clean = latent, 0
        if first_frame is not None:
            clean = first_frame.shape[2]
            head = first_frame.to(latent.dtype).expand(latent.shape[0], -1, -1, -1, -1)
            x = torch.cat([head, latent[:, :, clean:]], dim=2)
        ts = cls.timestep_input(transformer, x, timestep, expand_timesteps, clean_frames=clean)
        if condition is not None:
            x = torch.cat([x, i2v.fit_condition(condition.to(x.dtype), x)], dim=1)
        kw = {}
        if image_embeds is not None:
            kw["encoder_hidden_states_image"] = image_embeds.to(text_embeds.dtype).expand(x.shape[0], -1, -1)
        with cls.emb_override(transformer, emb):
            return transformer(hidden_states=x, timestep=ts, encoder_hidden_states=text_embeds, return_dict=False,
                               **kw)[0]

    # -- image-to-video ---------------------------------------------------------------------------
    @staticmethod
    def image_model(config: dict) -> bool:
        """Wan2.1-I2V and Wan2.2-I2V-A14B (their transformers take the mask and image latents in channels); not
        TI2V-5B, which is text-to-video without ``--image`` and image-to-video with it."""
        return i2v.image_model(config)

    @classmethod
    def image_condition(cls, components: dict, image: np.ndarray, *, device, dtype, seed: int = 0,
                        frames: int | None = None) -> ImageCondition:
        """What ``image`` (``uint8 [H, W, 3]`` at the run's size) gives the loop, as ``WanImageToVideoPipeline``
        conditions the model (:mod:`.image`): Wan2.1-I2V ``condition`` and ``image_embeds``, Wan2.2-I2V-A14B
        ``condition``, TI2V-5B (``expand_timesteps``) the image's latent as a clean anchor and ``first_frame``; a
        text-to-video Wan model the default noised first-frame anchoring. ``frames``: the run's length, for the
        ``condition`` (None: :data:`.image.CONDITION_FRAMES`, cut to the run's in the forward). The VAE's posterior
        mode is taken, as the pipeline takes it, so ``seed`` is unused for an image-to-video model."""
        kind = i2v.kind(components["transformer"].config, bool(components.get("expand_timesteps")))
        if kind is None:
            return super().image_condition(components, image, device=device, dtype=dtype, seed=seed)
        vae = components["vae"]
        if kind == "clean_first":
            first = i2v.first_frame_latent(vae, image, device)
            return ImageCondition(forward_kw={"first_frame": first}, anchor=first, anchor_noised=False)
        kw = {"condition": i2v.concat_condition(vae, image, frames or i2v.CONDITION_FRAMES, device)}
        if kind == "clip":
            kw["image_embeds"] = i2v.clip_tokens(components.get("image_encoder"), components.get("image_processor"),
                                                 image, device)
        return ImageCondition(forward_kw=kw)

    # -- sizes -----------------------------------------------------------------------------------
    @staticmethod
    def token_grid(transformer, latent: torch.Tensor) -> tuple[int, int, int]:
        """``(F', h, w)`` patches of ``latent`` ``[B, C, F, H, W]``."""
        pt, ph, pw = transformer.config.patch_size
        _, _, f, h, w = latent.shape
        return f // pt, h // ph, w // pw

    latent_shape = staticmethod(geometry.latent_shape)
    check_frames = staticmethod(geometry.check_frames)
    defaults = staticmethod(presets.defaults)

    # -- VAE -------------------------------------------------------------------------------------
    @staticmethod
    def _norm_tables(vae, device, dtype):
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
        return mean, inv_std

    @classmethod
    @torch.no_grad()
    def encode_video(cls, vae, frames: np.ndarray, device, dtype, seed: int = 0) -> torch.Tensor:
        """``uint8 [F, H, W, 3]`` -> normalised latent ``[1, C, F', h, w]`` float32: a seeded sample of
        the posterior, then ``(z - latents_mean) / latents_std`` as WanPipeline normalises."""
        f, h, w, _ = frames.shape
        cls.latent_shape(vae.config, {"patch_size": (1, 1, 1)}, f, h, w)  # frame count / size checks
        lat = sample_latent(vae, frames, device, dtype, seed).float()
        mean, inv_std = cls._norm_tables(vae, lat.device, torch.float32)
        return (lat - mean) * inv_std

    @classmethod
    @torch.no_grad()
    def decode_latents(cls, vae, latent: torch.Tensor) -> np.ndarray:
        """Normalised latent ``[1, C, F', h, w]`` -> ``uint8 [F, H, W, 3]`` (``z * std + mean``, as
        WanPipeline writes it: ``latents / (1 / std) + mean``)."""
        p = next(vae.parameters())
        mean, inv_std = cls._norm_tables(vae, latent.device, torch.float32)
        z = (latent.float() / inv_std + mean).to(p.device, p.dtype)
        return to_uint8(vae.decode(z).sample[0])

    # -- sampler ---------------------------------------------------------------------------------
    @staticmethod
    def make_scheduler(scheduler_config=None, flow_shift: float | None = None):
        """UniPC multistep on flow sigmas (what diffusers' Wan folders ship; their docs: flow_shift 3.0
        by default, 5.0 for 720p). From the folder's scheduler config when it is UniPC, with
        ``flow_shift`` overriding; otherwise diffusers' Wan defaults."""
        from diffusers import UniPCMultistepScheduler

        base = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)
        cfg = dict(scheduler_config or {})
        if cfg.get("_class_name", "UniPCMultistepScheduler") == "UniPCMultistepScheduler" and cfg:
            sched = UniPCMultistepScheduler.from_config(cfg)
        else:  # e.g. FlowMatchEulerDiscreteScheduler in a folder: keep its shift
            shift = cfg.get("shift", cfg.get("flow_shift"))
            sched = UniPCMultistepScheduler(**dict(base, **({"flow_shift": shift} if shift else {})))
        if flow_shift is not None:
            sched = UniPCMultistepScheduler.from_config(sched.config, flow_shift=float(flow_shift))
        return sched

    scheduler_state = staticmethod(scheduler_state)
    load_scheduler_state = staticmethod(load_scheduler_state)

    @staticmethod
    def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """WanPipeline's classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
        return uncond + scale * (cond - uncond)

    @staticmethod
    def expert_for(timestep, boundary_ratio: float | None, num_train_timesteps: int = 1000) -> str:
        """``"transformer"`` (Wan2.1, or Wan2.2's high-noise expert, ``t >= boundary_ratio * T``) or
        ``"transformer_2"`` (the low-noise expert, below), as WanPipeline chooses."""
        if boundary_ratio is None:
            return "transformer"
        t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        return "transformer" if t >= boundary_ratio * num_train_timesteps else "transformer_2"

    # -- the seam's remaining entries (see families/base.py) -------------------------------------
    @staticmethod
    def make_sampler(scheduler, cfg) -> WanSampler:
        """``scheduler``: a scheduler object (used as it is) or a folder's config (UniPC built from it)."""
        if scheduler is None or isinstance(scheduler, dict) or not hasattr(scheduler, "step"):
            scheduler = WanFamily.make_scheduler(scheduler, getattr(cfg, "flow_shift", None))
        return WanSampler(scheduler)

    @classmethod
    def guide_cfg(cls, cond, uncond, scale: float, t, cfg):
        return cls.cfg(cond, uncond, scale)

    @classmethod
    def geometry(cls, transformer, vae, frames: int, height: int, width: int) -> tuple:
        return cls.latent_shape(vae.config, transformer.config, frames, height, width)

    @staticmethod
    def text_spec(transformer) -> tuple[int | None, int]:
        """``(required length or None, width)``: any length (the pipeline pads umT5's output to 512), except
        for CLIP image tokens (Wan2.1-I2V): diffusers' cross-attention takes the last 512 context tokens as the
        text and those before as the image's, so the text must be exactly 512 tokens."""
        need = presets.TEXT_LEN if _cfg_get(transformer.config, "image_dim") is not None else None
        return need, int(_cfg_get(transformer.config, "text_dim"))

    @staticmethod
    def prompt_length(transformer) -> int:
        return 512  # WanPipeline.__call__'s max_sequence_length (its encode_prompt defaults to 226)

    @staticmethod
    def encode_prompts(model: str, texts: dict[str, str], transformer, device, dtype) -> dict:
        from .text import encode_prompts_umt5

        return encode_prompts_umt5(model, texts, device, dtype)

    # -- memory (--dry-run) and the guided backward's FFN -----------------------------------------
    memory_config = staticmethod(memory.memory_config)

    estimate = staticmethod(memory.estimate_wan)

    @staticmethod
    def dry_run_table(model: str, cfg, offload: str = "none") -> str:
        """Wan's header says more than the generic one: experts, group offload, host memory, FFN slices."""
        return memory.dry_run_table(model, frames=cfg.frames, height=cfg.height, width=cfg.width,
                                    guidance_blocks=cfg.guidance_blocks, dtype=cfg.dtype, opt_mode=cfg.opt_mode,
                                    checkpointing=cfg.gradient_checkpointing,
                                    # --cpu-offload is model offload, as FamilyBase.dry_run_table reads it
                                    offload="model" if offload == "none" and cfg.cpu_offload else offload,
                                    offload_activations=cfg.offload_activations, ffn_chunks=cfg.ffn_chunks)

    @staticmethod
    def chunk_ffn(transformer, chunks: int | None, n_tokens: int) -> int:
        return chunking.install(transformer, chunking.resolve_chunks(chunks, n_tokens, transformer.config.ffn_dim))

    @staticmethod
    def unchunk_ffn(transformer) -> None:
        chunking.uninstall(transformer)
