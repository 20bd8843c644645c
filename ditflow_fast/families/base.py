"""The contract between the guidance loop and a model family, and the pieces families share.

:class:`Family` is the contract as code: every member the loop (:class:`ditflow_fast.guidance.loop.Guide`),
``transfer`` and ``--dry-run`` call. A family is a class of static/class methods (no per-run state;
per-transformer caches live on the transformer) that subclasses :class:`FamilyBase`, which gives the
optional hooks their defaults, and is registered with :func:`ditflow_fast.families.register`, which
refuses it (``TypeError`` naming the members) unless it has every member of :class:`Family`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ModelError  # noqa: F401  (re-exported: families raise it)
from .estimate import Estimate


class Family(Protocol):
    """Everything a family gives. Required members first; the hooks after ``# -- optional`` have
    defaults in :class:`FamilyBase`."""

    name: str
    label: str  # how error messages list it among the supported families
    transformer_class: str  # the diffusers classes whose configs the command line reads before loading
    vae_class: str
    text_position: str  # "prefix" (text tokens lead the joint attention), "none" (cross-attention), "suffix"
    latent_layout: str  # "BFCHW" or "BCFHW"
    PRESETS: dict  # public configs by hub id: --dry-run reads them without a download
    lazy_classes: tuple[str, ...]  # optional ("diffusers.X", "transformers.Y"): see FamilyBase
    latents_in_model_dtype: bool  # optional: the pipeline rounds its latent to the model dtype each step

    # recognising and loading
    def matches(self, model_index: dict | None, transformer_class_name: str | None) -> bool: ...
    def load(self, model: str, dtype: torch.dtype) -> dict:
        """``transformer``, ``transformer_2`` (or None), ``vae``, ``scheduler_config``, ``boundary_ratio``,
        ``expand_timesteps``; :class:`ModelError` naming ``--model``."""

    # attention: a thin processor per block computing q/k/v as diffusers' does (bit-identical when
    # idle) and asking the shared GuidanceController (guidance/controller.py) what to capture, inject, stop
    def blocks(self, transformer) -> list: ...
    def install(self, transformer, controller=None): ...
    def uninstall(self, transformer) -> None: ...

    # forwards; ``emb``: the positions optimised in --opt-mode emb, replacing the model's own
    def forward(self, transformer, latent, text, t, emb=None) -> torch.Tensor: ...
    def initial_emb(self, transformer, latent) -> torch.Tensor: ...
    def emb_fingerprint(self, transformer) -> str: ...

    # latents and the VAE
    def token_grid(self, transformer, latent) -> tuple[int, int, int]: ...
    def geometry(self, transformer, vae, frames: int, height: int, width: int) -> tuple[int, ...]: ...
    def check_frames(self, frames: int, temporal: int = 4) -> None: ...
    def encode_video(self, vae, frames, device, dtype, seed: int = 0) -> torch.Tensor: ...
    def decode_latents(self, vae, latents): ...

    # text
    def text_spec(self, transformer) -> tuple[int | None, int]: ...
    def encode_prompts(self, model: str, texts: dict[str, str], transformer, device, dtype) -> dict: ...

    # sampling, defaults, memory
    def make_sampler(self, scheduler, cfg) -> Sampler: ...
    def guide_cfg(self, cond, uncond, scale: float, t, cfg): ...
    def defaults(self, config: dict) -> dict: ...
    def memory_config(self, model: str) -> dict:
        """The config entries the memory model reads: a preset's, or a local folder's (no weights)."""
    def estimate(self, config: dict, *, frames: int, height: int, width: int, guidance_block: int,
                 bytes_per_elem: int = 2, opt_mode: str = "latent", checkpointing: bool = True,
                 offload: str = "none", offload_activations: bool = False,
                 ffn_chunks: int | None = None) -> Estimate: ...

    # -- optional (defaults in FamilyBase)
    def run_until(self, transformer, latent, text, t, emb=None, *, stop_after, qk_blocks=(), out_blocks=(),
                  copy_kv_blocks=(), qk_rope: bool = True): ...
    def emb_kind(self, transformer) -> str: ...
    def has_second_expert(self, model: str, index: dict | None = None) -> bool: ...
    def expert_for(self, timestep, boundary_ratio: float | None, num_train_timesteps: int = 1000) -> str: ...
    def chunk_ffn(self, transformer, chunks: int | None, n_tokens: int) -> int: ...
    def unchunk_ffn(self, transformer) -> None: ...
    def dry_run_table(self, model: str, cfg, offload: str = "none") -> str: ...
    def dry_run_notes(self, model: str, cfg, run: DryRun) -> list[str]: ...
    def prompt_length(self, transformer) -> int | None: ...
    def block_count(self, config: dict) -> int: ...
    def needs_uncond(self, cfg) -> bool: ...
    def prepare(self, transformer, cfg) -> dict: ...
    def pipeline_prompt(self, pipe, text: str, transformer, device, dtype) -> torch.Tensor: ...
    def image_model(self, config: dict) -> bool: ...
    def image_condition(self, components: dict, image, *, device, dtype, seed: int = 0,
                        frames: int | None = None) -> ImageCondition: ...


def contract_members() -> list[str]:
    """The names :class:`Family` asks for, attributes first."""
    methods = [n for n, v in vars(Family).items() if callable(v) and not n.startswith("_")]
    return [*Family.__annotations__, *methods]


def missing_members(family) -> list[str]:
    """The members of :class:`Family` that ``family`` lacks (a method must be callable)."""
    attrs = set(Family.__annotations__)
    return [n for n in contract_members()
            if not hasattr(family, n) or (n not in attrs and not callable(getattr(family, n)))]


@dataclasses.dataclass
class DryRun:
    """What ``--dry-run`` resolved for the generic table (:meth:`FamilyBase.dry_run_table`), handed to a family's
    :meth:`~FamilyBase.dry_run_notes`: the memory config, its defaults, the run's sizes, guidance block, element
    size and offload mode (``--cpu-offload`` counts as ``"model"``), and :meth:`~Family.estimate`'s answer."""

    config: dict
    defaults: dict
    frames: int
    height: int
    width: int
    block: int
    bytes_per_elem: int
    offload: str
    estimate: Estimate


@dataclasses.dataclass
class ImageCondition:
    """What a first frame gives the loop (image-to-video; docs/i2v.md).

    ``forward_kw``: keyword arguments every forward of the run passes to the family's ``forward`` and
    ``run_until`` (an I2V model's image inputs: image latents in channels, CLIP image tokens, ...).
    ``anchor``: the first latent frame(s) in the family's latent layout (the frame axis of length ``k``), which the
    loop holds the latent's first ``k`` frames to before every forward and in the result: noised to the step's
    level (``anchor_noised``, the training-free anchoring of a text-to-video model) or clean (Wan2.2-TI2V, whose
    forward then gives those tokens timestep 0 itself)."""

    forward_kw: dict = dataclasses.field(default_factory=dict)
    anchor: torch.Tensor | None = None
    anchor_noised: bool = True

    def forward_kw_on(self, device, dtype) -> dict:
        """``forward_kw`` with its floating tensors on ``device`` in ``dtype`` (the run's)."""
        return {k: v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in self.forward_kw.items()}


class FamilyBase:
    """The optional hooks' defaults: one expert, no FFN slicing, the generic ``--dry-run`` table, RoPE as the
    positions of emb mode, and the truncated forward through the family's own :meth:`~Family.forward`."""

    # The classes a run imports lazily besides transformer_class and vae_class (schedulers, pipelines, text
    # encoders), as "package.Name": the app imports them on one thread before runs start, since diffusers' and
    # transformers' lazy modules are not thread-safe.
    lazy_classes: tuple[str, ...] = ()
    # The flow pipelines (Wan, LTX-Video, HunyuanVideo) keep the latent in float32 between steps and cast only
    # the model's input: a bf16 latent loses a sampler step's small updates, and Adam's.
    latents_in_model_dtype: bool = False
    schedulers: tuple[str, ...] = ()  # GuidanceConfig.scheduler names make_sampler builds; () for its default alone
    text_folders: tuple[str, ...] = ("tokenizer", "text_encoder")  # what encoding --prompt reads from a folder

    @classmethod
    def run_until(cls, transformer, latent, text, t, emb=None, *, stop_after: int | None, qk_blocks=(),
                  out_blocks=(), copy_kv_blocks=(), qk_rope: bool = True, **forward_kw):
        """:func:`ditflow_fast.guidance.forward.run_until` (the arming, checks and early stop) around the family's
        own call, ``forward(transformer, latent, text, t, emb, **forward_kw)``, over its :meth:`~Family.blocks`.
        Returns the controller with its records."""
        from ..guidance.forward import run_until

        return run_until(transformer, stop_after=stop_after, qk_blocks=qk_blocks, out_blocks=out_blocks,
                         copy_kv_blocks=copy_kv_blocks, n_blocks=len(cls.blocks(transformer)), qk_rope=qk_rope,
                         call=lambda: cls.forward(transformer, latent, text, t, emb, **forward_kw))

    @staticmethod
    def emb_kind(transformer) -> str:
        """What ``--opt-mode emb`` optimises: ``"rope"`` (separate query and key RoPE tables ``[2, 2, N, d]``)."""
        return "rope"

    @staticmethod
    def has_second_expert(model: str, index: dict | None = None) -> bool:
        return False

    @staticmethod
    def prompt_length(transformer) -> int | None:
        """Tokens a caller's pipeline encodes a prompt to (its ``__call__``'s ``max_sequence_length``);
        None: the pipeline's ``encode_prompt`` default."""
        return None

    @staticmethod
    def expert_for(timestep, boundary_ratio: float | None, num_train_timesteps: int = 1000) -> str:
        return "transformer"

    @staticmethod
    def block_count(config: dict) -> int:
        """Guidable blocks of a transformer config (what ``--guidance-block`` indexes): ``num_layers``."""
        return int(config["num_layers"])

    @staticmethod
    def needs_uncond(cfg) -> bool:
        """Whether a denoising step runs the unconditional forward for ``guide_cfg`` (False for a
        guidance-distilled model, whose guidance is an input of the one forward)."""
        return True

    @staticmethod
    def prepare(transformer, cfg) -> dict:
        """Set the run's inputs that the family's forward reads besides its arguments (HunyuanVideo: the
        embedded guidance scale) on ``transformer``; returns them (json-able; the reference cache keys on
        them). Default: none."""
        return {}

    @classmethod
    def pipeline_prompt(cls, pipe, text: str, transformer, device, dtype) -> torch.Tensor:
        """One prompt's embeddings ``[1, L, D]`` from a caller's pipeline's own ``encode_prompt``, at the length its
        ``__call__`` uses (:meth:`prompt_length`); the caller runs it under ``no_grad``."""
        length = cls.prompt_length(transformer)
        kw = {} if length is None else {"max_sequence_length": length}
        return pipe.encode_prompt(text, do_classifier_free_guidance=False, num_videos_per_prompt=1, device=device,
                                  dtype=dtype, **kw)[0]

    @staticmethod
    def image_model(config: dict) -> bool:
        """Whether a transformer ``config`` is an image-to-video model's (it needs ``--image``; no weights are read).
        Default: text-to-video."""
        return False

    @classmethod
    def image_condition(cls, components: dict, image: np.ndarray, *, device, dtype, seed: int = 0,
                        frames: int | None = None) -> ImageCondition:
        """What ``image`` (``uint8 [H, W, 3]`` at the run's size) gives a run of ``frames`` video frames. Default (a
        text-to-video model): first-frame anchoring, the image's own latent (its VAE encoding as a one-frame video)
        held as the first latent frame, noised to each step's level. An I2V family returns its image inputs in
        ``forward_kw``."""
        one = cls.encode_video(components["vae"], image[None], device=device,
                               dtype=next(components["vae"].parameters()).dtype, seed=seed)
        axis = 1 if cls.latent_layout == "BFCHW" else 2
        return ImageCondition(anchor=one.narrow(axis, 0, 1).float())

    @staticmethod
    def chunk_ffn(transformer, chunks: int | None, n_tokens: int) -> int:
        """Put the guided backward's recomputed per-token work (Wan: the block's tail, FFN included) in token slices;
        returns the slice count (1: none)."""
        return 1

    @staticmethod
    def unchunk_ffn(transformer) -> None:
        """Undo :meth:`chunk_ffn` (a no-op where nothing was installed)."""

    @classmethod
    def dry_run_table(cls, model: str, cfg, offload: str = "none") -> str:
        """What ``transfer --dry-run`` prints: the run's sizes, then :meth:`estimate`'s table, then the family's
        :meth:`dry_run_notes`. ``cfg``: the command's GuidanceConfig (unset sizes, block and dtype come from
        :meth:`defaults`)."""
        from .estimate import add_guidance_blocks, blocks_label, config_views

        config = cls.memory_config(model)
        d = cls.defaults(config)
        frames, height, width = cfg.frames or d["frames"], cfg.height or d["height"], cfg.width or d["width"]
        cls.check_frames(frames)
        # the run's own geometry on the configs: a size (or frame count) the run refuses gets no table
        cls.geometry(*config_views(cls.transformer_class, cls.vae_class, config), frames, height, width)
        blocks = cfg.guidance_blocks or d["guidance_blocks"]
        block = max(blocks)
        b = 4 if str(cfg.dtype or d["dtype"]).replace("torch.", "") == "float32" else 2
        offload = "model" if offload == "none" and cfg.cpu_offload else offload
        est = add_guidance_blocks(
            cls.estimate(config, frames=frames, height=height, width=width, guidance_block=block,
                         bytes_per_elem=b, opt_mode=cfg.opt_mode, checkpointing=cfg.gradient_checkpointing,
                         offload=offload, offload_activations=cfg.offload_activations, ffn_chunks=cfg.ffn_chunks),
            blocks)
        head = (f"{model}: {frames} frames at {height}x{width}, {blocks_label(blocks)}, {b}-byte elements, "
                f"opt-mode {cfg.opt_mode}, checkpointing {'on' if cfg.gradient_checkpointing else 'off'}")
        note = "(derivation: docs/memory.md; the text encoder runs before the loop and is offloaded)"
        run = DryRun(config, d, frames, height, width, block, b, offload, est)
        return "\n".join([f"{head}\n{est.table()}\n{note}{foreign_vae_note(model, cls.vae_class)}",
                          *cls.dry_run_notes(model, cfg, run)])

    @staticmethod
    def dry_run_notes(model: str, cfg, run: DryRun) -> list[str]:
        """Lines the family adds under the generic ``--dry-run`` table (its unverified default block, what runs
        outside the loop, ...); ``run``: what the table was computed from. Default: none."""
        return []


class Sampler:
    """A diffusers scheduler behind one interface, with a state that makes resuming exact.

    ``step`` gets the guided step index ``i`` and the timesteps so that multistep schedulers whose
    history lives outside (CogVideoX's DPM: ``x0_prev``) or inside the scheduler object (UniPC)
    both resume bit for bit: :meth:`state` returns tensors and json-able metadata saved with the
    latent after every step, :meth:`load_state` puts them back.
    """

    def __init__(self, scheduler):
        self.sched = scheduler

    def set_timesteps(self, steps: int, device) -> list:
        self.sched.set_timesteps(steps, device=device)
        return list(self.sched.timesteps)

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.sched, "init_noise_sigma", 1.0))

    def add_noise(self, x, noise, t):
        return self.sched.add_noise(x, noise, torch.as_tensor([t], device=x.device).reshape(1))

    def scale_model_input(self, x, t):
        return self.sched.scale_model_input(x, t)

    def step(self, i: int, t, pred: torch.Tensor, latents: torch.Tensor, generator) -> torch.Tensor:
        return self.sched.step(pred, t, latents, generator=generator, return_dict=False)[0]

    def latent_edited(self) -> None:
        """The loop optimised the latent since the last :meth:`step`. A single-step scheduler steps from
        the latent it is given, so there is nothing to do; a multistep corrector that rebuilds the
        current sample from its history (UniPC) must not undo the edit."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, device) -> None:
        """Restore :meth:`state`; nothing to do for single-step schedulers."""


def sample_latent(vae, frames: np.ndarray, device, dtype, seed: int = 0) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> a seeded sample of the VAE's posterior ``[1, C, F', h, w]`` (its dtype, not
    normalised): the pixels to ``[-1, 1]`` as ``[1, 3, F, H, W]``, as diffusers' video processors give them."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    g = torch.Generator(device=device).manual_seed(seed)
    return vae.encode(x.to(device, dtype)).latent_dist.sample(generator=g)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """A decoded ``[3, F, H, W]`` video in ``[-1, 1]`` -> ``uint8 [F, H, W, 3]`` on the CPU."""
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()


def decoded_frames_causal(latent_frames: int, temporal: int) -> int:
    """Frames a causal video VAE (Wan) decodes from ``latent_frames``: the first latent frame gives one
    frame, every later one ``temporal``."""
    return 1 + (latent_frames - 1) * temporal


def nearest_valid(frames: int, valid) -> list[int]:
    """The valid counts nearest to ``frames`` (one below and one above where they exist)."""
    below = [v for v in valid if v < frames]
    above = [v for v in valid if v > frames]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def foreign_vae(model: str, vae_class: str) -> str | None:
    """The class a local folder's ``vae/config.json`` names when it is not the family's ``vae_class`` (the toy
    world's FrameAutoencoder in a DiT folder), else None. Loading refuses such a folder by name (building the
    family's VAE from it fails deep inside diffusers); ``--dry-run`` says its VAE rows assume the family's."""
    try:
        cfg = json.loads((Path(model).expanduser() / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cls = cfg.get("_class_name", cfg.get("class")) if isinstance(cfg, dict) else None
    return None if cls in (None, vae_class) else str(cls)


def refuse_foreign_vae(model: str, vae_class: str) -> None:
    cls = foreign_vae(model, vae_class)
    if cls is not None:
        raise ModelError(f"--model {model}: its vae/ is a {cls}, not the {vae_class} this family loads; "
                         "transfer takes diffusers pipeline folders")


def foreign_vae_note(model: str, vae_class: str) -> str:
    """The ``--dry-run`` line for a folder whose VAE the family's memory model does not know ("" if none)."""
    cls = foreign_vae(model, vae_class)
    return "" if cls is None else f"\n(vae/ holds a {cls}: the VAE rows are those of the family's {vae_class})"
