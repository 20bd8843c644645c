"""The CogVideoX family (1.0: 2B and 5B; 1.5: 5B) on the seam.

Differences from Wan that shape this module: text tokens are a *prefix* of the joint attention;
latents are ``[B, F, C, H, W]`` scaled by ``scaling_factor``; 5B has 3-D RoPE (passed to the
blocks as ``image_rotary_emb``, optimised as separate query and key tables), 2B an additive table
(optimised through a hook on the patch embedding); the sampler is DPM (5B, whose step carries the
previous ``x0`` outside the scheduler) or DDIM (2B), with dynamic CFG for 5B.

CogVideoX 1.5 is the same transformer class with ``patch_size_t=2``: a token covers two latent frames, so the
token grid and the AMF's frame axis are temporal patches, and a forward pads an odd latent frame count as
diffusers' pipeline does (:mod:`.patches`); its RoPE is sliced from integer positions (:mod:`.positions`).

Frame counts: the encoder gives ``(frames - 1) // 4 + 1`` latent frames, but diffusers' decoder
works on pairs of latent frames and gives ``4 * L`` frames for an even count ``L`` and ``4 * (L - 1)
+ 1`` for an odd one (measured on the tiny VAE for 1..49 frames, tests/cli/test_hardening_transfer.py). So
exactly the counts ``1, 8, 9, 16, 17, 24, 25, ...`` come back as asked; 24 (the paper's) and 49 do. 1.5 has
the same rule: diffusers' pipeline pads the latent frames to a multiple of ``patch_size_t`` for the transformer
and drops the padding before decoding (81 frames: 21 latent frames, 22 in the transformer, 81 decoded).

Image-to-video (CogVideoX-5B-I2V, CogVideoX1.5-5B-I2V; ``CogVideoXImageToVideoPipeline`` folders; docs/i2v.md): the
transformer takes twice the latent channels. :meth:`CogVideoXFamily.image_condition` gives the image's one-frame
latent as the forward keyword ``image_latents``; every forward concatenates, in channels after the noisy latent,
that latent in latent frame 0 and zeros in every other frame, as the pipeline does. The loop's latent (what latent
mode optimises, what is decoded) keeps the latent channels only; the image part is constant. 1.5 with an odd latent
frame count: the noisy latent is padded with a copy of its first frame (as above) and the image sits in that padding
frame, zeros after it: the layout of diffusers' ``__call__`` (its padding frame is its own noise, denoised and
dropped) and of the CogVideoX training code (a copy of the first frame; zai-org/CogVideo issues 551, 660).
"""

from __future__ import annotations

import json
import math

import torch

from ...guidance.forward import run_until
from ..base import FamilyBase, ImageCondition, Sampler, nearest_valid
from ..estimate import Estimate
from . import attention, components, memory, positions
from .patches import pad_latent, patch_frames, patch_t

FINGERPRINT_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "patch_size", "in_channels",
                    "use_rotary_positional_embeddings", "max_text_seq_length", "sample_height", "sample_width")


def decoded_frames(latent_frames: int) -> int:
    """Frames diffusers' CogVideoX decoder returns for ``latent_frames`` (pairs of latent frames)."""
    if latent_frames <= 1:
        return 1
    return 4 * latent_frames if latent_frames % 2 == 0 else 4 * (latent_frames - 1) + 1


def latent_frames_for(frames: int, temporal: int = 4) -> int:
    return (frames - 1) // temporal + 1


def valid_frames(limit: int, temporal: int = 4) -> list[int]:
    return [f for f in range(1, limit + 1) if decoded_frames(latent_frames_for(f, temporal)) == f]


class CogVideoXSampler(Sampler):
    """DDIM or DPM; DPM's step needs the previous ``x0`` and timestep, kept in the saved state."""

    def __init__(self, scheduler, kind: str):
        super().__init__(scheduler)
        self.kind = kind
        self.x0_prev = None
        self.timesteps: list = []

    def set_timesteps(self, steps, device):
        self.timesteps = super().set_timesteps(steps, device)
        return self.timesteps

    def step(self, i, t, pred, latents, generator):
        tt = torch.as_tensor(t, device=latents.device)
        if self.kind == "dpm":
            back = torch.as_tensor(self.timesteps[i - 1], device=latents.device) if i > 0 else None
            out, self.x0_prev = self.sched.step(pred, self.x0_prev, tt, back, latents, generator=generator,
                                                return_dict=False)
            return out
        return self.sched.step(pred, tt, latents, generator=generator, return_dict=False)[0]

    def state(self):
        return ({} if self.x0_prev is None else {"x0_prev": self.x0_prev.detach().cpu().contiguous()}), {}

    def load_state(self, tensors, meta, device):
        x0 = tensors.get("x0_prev")
        self.x0_prev = None if x0 is None else x0.to(device)


class CogVideoXFamily(FamilyBase):
    name = "cogvideox"
    label = "CogVideoX (CogVideoXPipeline / CogVideoXImageToVideoPipeline folders)"
    transformer_class, vae_class = "CogVideoXTransformer3DModel", "AutoencoderKLCogVideoX"
    text_position = "prefix"
    latent_layout = "BFCHW"
    latents_in_model_dtype = True  # CogVideoXPipeline casts its latent to the prompt's dtype after every step
    schedulers = ("dpm", "ddim")
    PRESETS = memory.PRESETS
    lazy_classes = ("diffusers.CogVideoXDDIMScheduler", "diffusers.CogVideoXDPMScheduler",
                    "transformers.AutoTokenizer", "transformers.T5TokenizerFast", "transformers.T5EncoderModel")

    # -- recognising and loading -----------------------------------------------------------------
    @staticmethod
    def matches(model_index: dict | None, transformer_class_name: str | None) -> bool:
        if transformer_class_name == "CogVideoXTransformer3DModel":
            return True
        cls = (model_index or {}).get("_class_name") or ""
        return cls in components.PIPELINES

    @staticmethod
    def load(model: str, dtype: torch.dtype) -> dict:
        tr, vae, sched_cfg = components.load_components(model, dtype)
        return dict(transformer=tr, transformer_2=None, vae=vae, scheduler_config=sched_cfg, boundary_ratio=None,
                    expand_timesteps=False)

    # -- attention -------------------------------------------------------------------------------
    @staticmethod
    def blocks(transformer) -> list:
        return list(transformer.transformer_blocks)

    @staticmethod
    def install(transformer, controller=None):
        return attention.install(transformer, controller)

    @staticmethod
    def uninstall(transformer) -> None:
        attention.uninstall(transformer)

    # -- positions -------------------------------------------------------------------------------
    @staticmethod
    def _tables(transformer, latent):
        """``(rope, base)`` for this latent size, cached on the transformer (one of them None); 1.5: for the latent
        as padded for the transformer."""
        _, f, _, lh, lw = latent.shape
        p_t = patch_t(transformer)
        f = patch_frames(f, p_t) * p_t
        key = (f, lh, lw, str(latent.device))
        cache = transformer.__dict__.setdefault("_ditflow_pos_cache", {})
        if key not in cache:
            rope = positions.rotary_embedding(transformer, f, lh, lw, device=latent.device)
            base = None if rope is not None else positions.base_position_table(transformer, f, lh, lw).to(latent.device)
            cache.clear()
            cache[key] = (rope, base)
        return cache[key]

    @classmethod
    def initial_emb(cls, transformer, latent) -> torch.Tensor:
        rope, base = cls._tables(transformer, latent)
        if rope is not None:
            one = torch.stack([rope[0], rope[1]]).float()
            return torch.stack([one, one])  # queries and keys start from the same RoPE, then part
        return base.float()

    @staticmethod
    def emb_kind(transformer) -> str:
        return "rope" if transformer.config.use_rotary_positional_embeddings else "posemb"

    @staticmethod
    def emb_fingerprint(transformer) -> str:
        cfg = transformer.config  # the same JSON as before the family seam: older saved files stay valid
        got = {k: cfg.get(k) if hasattr(cfg, "get") else getattr(cfg, k, None) for k in FINGERPRINT_KEYS}
        if patch_t(transformer) > 1:  # 1.5 only, so that 1.0's fingerprints stay as they were
            got["patch_size_t"] = patch_t(transformer)
        return json.dumps(got, sort_keys=True)

    @classmethod
    def _kwargs(cls, transformer, latent, text, t, emb, image_latents=None):
        """The transformer's keywords, the position override, and the latent frames padded in front (1.5); an I2V
        transformer's input: the noisy latent and, in channels after it, the image latents (:meth:`_image_part`)."""
        rope, base = cls._tables(transformer, latent)
        dtype = latent.dtype
        if emb is not None and rope is not None:  # [2 (q, k), 2 (cos, sin), N, d]
            rope = tuple((emb[i, 0].to(dtype), emb[i, 1].to(dtype)) for i in range(2))
        elif rope is not None:
            rope = (rope[0].to(dtype), rope[1].to(dtype))
        ts = torch.full((latent.shape[0],), int(t), device=latent.device, dtype=torch.long)
        ctx = positions.position_override(transformer, emb if rope is None else None, base)
        latent, pad = pad_latent(latent, patch_t(transformer))
        if components.image_to_video(transformer.config) or image_latents is not None:
            latent = torch.cat([latent, cls._image_part(transformer, latent, image_latents)], dim=2)
        kw = dict(hidden_states=latent, encoder_hidden_states=text, timestep=ts, image_rotary_emb=rope)
        if transformer.config.get("ofs_embed_dim"):  # 1.5 I2V's; the value diffusers' I2V pipeline passes
            kw["ofs"] = latent.new_full((1,), 2.0)
        return kw, ctx, pad

    @staticmethod
    def _image_part(transformer, latent, image_latents):
        """The I2V transformer's extra channels for the (padded) noisy ``latent`` ``[1, F, C, h, w]``: the image's
        latent ``[1, 1, C, h, w]`` in frame 0, zeros in the other frames (diffusers' ``prepare_latents``)."""
        if not components.image_to_video(transformer.config):
            raise ValueError("image_latents given to a text-to-video CogVideoX transformer (it takes "
                             f"{transformer.config.in_channels} channels); its --image is a first-frame anchor")
        if image_latents is None:
            raise components.ModelError("--image is required: an image-to-video CogVideoX transformer takes the "
                                        "image's latent in channels (image_latents)")
        want = (latent.shape[0], 1, *latent.shape[2:])
        if tuple(image_latents.shape) != want:
            raise ValueError(f"image_latents {tuple(image_latents.shape)} do not fit the latent "
                             f"{tuple(latent.shape)}: expected {want}")
        zeros = latent.new_zeros(latent.shape[0], latent.shape[1] - 1, *latent.shape[2:])
        return torch.cat([image_latents.to(latent.dtype), zeros], dim=1)

    @classmethod
    def forward(cls, transformer, latent, text, t, emb=None, image_latents=None) -> torch.Tensor:
        kw, ctx, pad = cls._kwargs(transformer, latent, text, t, emb, image_latents)
        with ctx:
            return transformer(**kw, return_dict=False)[0][:, pad:]  # the padding's prediction goes, as diffusers'

    @classmethod
    def run_until(cls, transformer, latent, text, t, emb=None, image_latents=None, **what):
        kw, ctx, _ = cls._kwargs(transformer, latent, text, t, emb, image_latents)
        with ctx:
            return run_until(transformer, **kw, **what)

    # -- latents ---------------------------------------------------------------------------------
    @staticmethod
    def token_grid(transformer, latent) -> tuple[int, int, int]:
        """``(frames, h, w)`` of the video tokens; 1.5: frames are temporal patches of two latent frames."""
        p = transformer.config.patch_size
        _, f, _, lh, lw = latent.shape
        return patch_frames(f, patch_t(transformer)), lh // p, lw // p

    @classmethod
    def geometry(cls, transformer, vae, frames: int, height: int, width: int) -> tuple[int, ...]:
        """Latent ``(1, F', C, h, w)``; :class:`ModelError` for sizes or frame counts the model cannot give."""
        f, lh, lw = components.check_size(transformer, vae, frames, height, width)
        cls.check_frames(frames, vae.config.temporal_compression_ratio)
        return 1, f, components.latent_channels(transformer.config), lh, lw

    @staticmethod
    def check_frames(frames: int, temporal: int = 4) -> None:
        """The frame rule alone (no model needed), for ``--dry-run`` and early checks."""
        if decoded_frames(latent_frames_for(frames, temporal)) != frames:
            near = nearest_valid(frames, valid_frames(frames + 16, temporal))
            raise components.ModelError(
                f"--frames {frames}: this model's VAE would write {decoded_frames(latent_frames_for(frames, temporal))}"
                f" frames, not {frames}; CogVideoX gives exactly 1, 8, 9, 16, 17, ... (8k and 8k+1); nearest: "
                f"{' or '.join(map(str, near))}")

    @staticmethod
    def encode_video(vae, frames, device, dtype, seed: int = 0) -> torch.Tensor:
        return components.encode_video(vae, frames, device=device, dtype=dtype, seed=seed)

    @staticmethod
    def decode_latents(vae, latents) -> object:
        return components.decode_latents(vae, latents)

    # -- image-to-video --------------------------------------------------------------------------
    @staticmethod
    def image_model(config: dict) -> bool:
        """CogVideoXImageToVideoPipeline's transformer (twice the latent channels in); a text-to-video CogVideoX
        model keeps the seam's default, first-frame anchoring."""
        return components.image_to_video(config)

    @classmethod
    def image_condition(cls, components_: dict, image, *, device, dtype, seed: int = 0,
                        frames: int | None = None) -> ImageCondition:
        """An I2V model: ``image_latents``, the image's one-frame latent as the pipeline encodes it
        (:func:`.components.encode_image`), which every forward puts in channels beside the noisy latent; no anchor
        (the model itself holds the first frame to the image). A text-to-video model: the seam's anchoring."""
        tr = components_["transformer"]
        if not components.image_to_video(tr.config):
            return super().image_condition(components_, image, device=device, dtype=dtype, seed=seed)
        lat = components.encode_image(components_["vae"], image, device=device, dtype=dtype, seed=seed)
        return ImageCondition(forward_kw={"image_latents": lat})

    # -- text ------------------------------------------------------------------------------------
    @staticmethod
    def text_spec(transformer) -> tuple[int | None, int]:
        """``(required length or None, width)`` of the prompt embeddings."""
        cfg = transformer.config
        need = None if cfg.use_rotary_positional_embeddings else cfg.max_text_seq_length
        return need, cfg.text_embed_dim

    @staticmethod
    def prompt_length(transformer) -> int:
        return int(transformer.config.max_text_seq_length)

    @staticmethod
    def encode_prompts(model: str, texts: dict[str, str], transformer, device, dtype) -> dict:
        return components._encode_t5(model, texts, transformer.config.max_text_seq_length, device, dtype)

    # -- sampler ---------------------------------------------------------------------------------
    @staticmethod
    def make_sampler(scheduler, cfg) -> CogVideoXSampler:
        """``scheduler``: a scheduler object (used as it is) or a config (DPM/DDIM built from it)."""
        if isinstance(scheduler, dict) or not hasattr(scheduler, "step"):
            scheduler = components.make_scheduler(scheduler, cfg.scheduler)
        return CogVideoXSampler(scheduler, cfg.scheduler)

    @staticmethod
    def guide_cfg(cond, uncond, scale: float, t, cfg):
        if cfg.dynamic_cfg:  # the CogVideoX pipeline's schedule, on the timestep value
            n = cfg.steps
            scale = 1 + scale * (1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2
        return uncond + scale * (cond - uncond)

    # -- defaults --------------------------------------------------------------------------------
    @staticmethod
    def defaults(config: dict) -> dict:
        """DiTFlow's: guidance block 20 (RoPE, 5B) or 15 (2B), or half the blocks of smaller models;
        24 frames at 480x720 (other than the published 2B/5B, i.e. tiny test models: 9 frames, as Wan's);
        bf16 (5B) / fp16 (2B) on GPUs; CFG 7, dynamic for 5B; DPM (5B) / DDIM (2B).

        1.5 (``patch_size_t``): block 20 too, taken by depth (1.5-5B has 5B's 42 blocks); unverified: no 1.5
        weights have run here (``note`` says so in ``--dry-run``). 81 frames at 768x1360, what diffusers' docs say
        the 1.5 text-to-video model was trained for (tiny models: 9 frames at their own ``sample_height/width``,
        diffusers' pipeline default); the rest as 5B's.

        Image-to-video: the same, the block unverified (no I2V weights have run). 5B-I2V's learned position table
        fixes the size (480x720) and is used only at its ``sample_frames`` (49; at other counts diffusers adds a
        sin-cos table instead), so 49 frames; 1.5-I2V: as 1.5 (diffusers' docs: 81 frames, height 768)."""
        rope = bool(config.get("use_rotary_positional_embeddings", False))
        n = int(config.get("num_layers", 30))
        want = 20 if rope else 15
        published = (n, int(config.get("num_attention_heads", 30))) in ((30, 30), (42, 48))
        out = dict(guidance_blocks=(want,) if want < n else (n // 2,), injection_blocks=(0,),
                   frames=24 if published else 9,
                   height=480, width=720, dtype="bfloat16" if rope else "float16", cfg_scale=7.0,
                   dynamic_cfg=rope, scheduler="dpm" if rope else "ddim", steps=50)
        if patch_t(config) > 1:
            size = (768, 1360) if published else (8 * config["sample_height"], 8 * config["sample_width"])
            why = "DiTFlow's CogVideoX-5B block, taken for CogVideoX 1.5 by depth" if want < n else "half the depth"
            out.update(frames=81 if published else 9, height=size[0], width=size[1],
                       note=f"guidance block {out['guidance_blocks'][0]} of {n}: {why}; unverified (no 1.5 weights "
                            "have run)")
        if components.image_to_video(config):
            if config.get("use_learned_positional_embeddings"):
                out.update(frames=int(config.get("sample_frames", 49)), height=8 * int(config["sample_height"]),
                           width=8 * int(config["sample_width"]))
            own = "DiTFlow's CogVideoX-5B block" if want < n else "half the depth"
            why = out.get("note", f"guidance block {out['guidance_blocks'][0]} of {n}: {own}").split(";")[0]
            out["note"] = f"{why}, for the image-to-video model; unverified (no image-to-video weights have run)"
        return out

    @staticmethod
    def dry_run_notes(model: str, cfg, run) -> list[str]:
        """The defaults' ``note`` (1.5's or I2V's unverified guidance block) where there is one and the default is
        used; for an I2V model, where its image goes."""
        note = run.defaults.get("note")
        out = [note] if note and not cfg.guidance_blocks else []
        if components.image_to_video(run.config):
            out.append("image-to-video (--image required): the image is encoded by the VAE (one frame) before the "
                       "loop, as the reference is; no image encoder. Its latent and the reference's first frame's, "
                       "zero-padded over the latent frames, ride along in channels ('image latents' above); the "
                       "token count is the text-to-video model's")
        if run.offload == "group":  # CogVideoX's host-offload constants were never measured
            out.append("--offload group: an upper bound. The table counts every transformer weight and every block "
                       "input as resident; group offload keeps about two blocks' weights on the GPU, and (with "
                       "activation offload, its default there) the saved block inputs in host memory")
        return out

    # -- memory (--dry-run) ---------------------------------------------------------------------
    memory_config = staticmethod(memory.config_for)

    @staticmethod
    def estimate(config: dict, *, frames: int, height: int, width: int, guidance_block: int, bytes_per_elem: int = 2,
                 opt_mode: str = "latent", checkpointing: bool = True, offload: str = "none",
                 offload_activations: bool = False, ffn_chunks: int | None = None) -> Estimate:
        """:func:`.memory.estimate`; any offload mode takes the VAE off the GPU. Activation offload and FFN
        slices are not modelled for CogVideoX: the prediction is then an upper bound."""
        return memory.estimate(config, frames=frames, height=height, width=width, guidance_block=guidance_block,
                               bytes_per_elem=bytes_per_elem, opt_mode=opt_mode, checkpointing=checkpointing,
                               vae_offload=offload != "none")
