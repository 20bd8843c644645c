"""The reference AMF of a video through a model: DiTFlow's reference procedure, for any supported family.

The procedure is ``Guide.reference_targets`` (``guidance/loop.py``): the clean latent of the video at
timestep 0 with the empty prompt, the forward stopped after the chosen block, q/k of the video tokens
recorded there, and ``compute_amf(..., mode="argmax")``: ``[F, F, h*w, 2]`` ``(dx, dy)`` in patches.

Two kinds of model folders:

- a diffusers folder of a supported family (``ditflow_fast.families``: CogVideoX, Wan2.1/2.2), encoded
  with its VAE; the empty prompt comes from ``--prompt-embeds`` (its ``empty``, else ``negative``) or
  from the model's text encoder;
- a bundled toy-world model (``assets/tiny_dit``, CogVideoX; ``assets/tiny_wan``, Wan: ``transformer/``,
  ``cond_embed.safetensors``, and its own frame codec in ``vae/`` instead of a diffusers VAE): its empty
  prompt is the condition table's ``NULL_CONDITION`` row, its clips the world's (8 frames, 32 x 32), its
  default block the demo's (``toyworld.settings.DemoSettings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class ModelHandle:
    """A loaded model, ready to measure the reference AMF of videos."""

    name: str  # what the user passed as --model
    family: object  # a family class of ditflow_fast.families
    kind: str  # "toy" or the family's name
    transformer: object
    encode: object  # uint8 [F, H, W, 3] -> latent (the family's layout), on ``device``
    empty: torch.Tensor  # [1, L, D] the empty prompt's embeddings
    frames: int  # default video frames, height, width
    height: int
    width: int
    default_block: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    temporal: int = 1  # video frames per latent frame (about)
    patch_px: int = 0  # toy models: video pixels per token side

    @property
    def n_blocks(self) -> int:
        return len(self.family.blocks(self.transformer))


def is_toy_folder(model: str) -> bool:
    p = Path(model).expanduser()
    return (p / "cond_embed.safetensors").is_file() and (p / "transformer" / "config.json").is_file() and \
        not (p / "model_index.json").is_file()


def default_model() -> str:
    from ..toyworld.model import DEFAULT_DIR

    return str(DEFAULT_DIR)


def _open_toy(model: str, device, dtype) -> ModelHandle:
    from ..families import family_of
    from ..toyworld.codec import check_codec, load_codec
    from ..toyworld.model import load_model, to_family_layout
    from ..toyworld.settings import DemoSettings
    from ..toyworld.world import FRAMES, NULL_CONDITION, SIZE

    tr, cond, _ = load_model(model)  # a CogVideoX or a Wan transformer
    codec = load_codec(model)
    check_codec(tr, codec)
    tr.requires_grad_(False).to(device)
    if dtype != torch.float32:
        tr.to(dtype)
    with torch.no_grad():
        empty = cond(torch.tensor([NULL_CONDITION])).to(device, dtype)

    def encode(frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255.0).permute(0, 3, 1, 2)[None]
        with torch.no_grad():
            return to_family_layout(tr, codec.encode(x)).to(device, dtype)

    fam, patch = family_of(tr), tr.config.patch_size  # patch: CogVideoX an int, Wan (t, h, w)
    block = DemoSettings().guidance_block
    n = len(fam.blocks(tr))
    # the demo's geometry: the world's clips (Wan's config has no sample size to derive it from)
    return ModelHandle(name=model, family=fam, kind="toy", transformer=tr, encode=encode, empty=empty,
                       frames=FRAMES, height=SIZE, width=SIZE,
                       default_block=block if block is not None and block < n else n // 2, device=device,
                       dtype=dtype, patch_px=int(codec.factor) * int(patch if isinstance(patch, int) else patch[-1]))


def _open_diffusers(model: str, device, dtype, prompt_embeds) -> ModelHandle:
    from ..families import detect, resolve_model_ref
    from ..families.prompts import prompt_embeddings

    fam = detect(model)
    ref, _ = resolve_model_ref(model)
    comps = fam.load(ref, dtype)
    tr, vae = comps["transformer"], comps["vae"]
    tr.requires_grad_(False).to(device)
    vae.requires_grad_(False).to(device)
    texts = prompt_embeddings(ref, "" if prompt_embeds is None else None, "", prompt_embeds, tr,
                              device=device, dtype=dtype, family=fam)
    cfg = {k: v for k, v in dict(tr.config).items() if not str(k).startswith("_")}
    d = fam.defaults(cfg)

    def encode(frames: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return fam.encode_video(vae, frames, device=device, dtype=next(vae.parameters()).dtype).to(dtype)

    temporal = int(getattr(vae.config, "temporal_compression_ratio", None) or
                   getattr(vae.config, "scale_factor_temporal", None) or 4)
    handle = ModelHandle(name=model, family=fam, kind=fam.name, transformer=tr, encode=encode,
                         empty=texts["empty"].to(device, dtype), frames=int(d["frames"]), height=int(d["height"]),
                         width=int(d["width"]), default_block=int(max(d["guidance_blocks"])), device=device,
                         dtype=dtype, temporal=temporal)
    handle.vae = vae
    return handle


def open_model(model: str | None = None, *, device=None, dtype=torch.float32, prompt_embeds=None) -> ModelHandle:
    """Load ``model`` (default: the bundled toy model) for :func:`reference_amf`."""
    model = model or default_model()
    device = torch.device(device or "cpu")
    if is_toy_folder(model):
        return _open_toy(model, device, dtype)
    return _open_diffusers(model, device, dtype, prompt_embeds)


def check_geometry(handle: ModelHandle, frames: int, height: int, width: int) -> None:
    """A :class:`ValueError` naming the option when the model cannot take this video size."""
    if handle.kind == "toy":
        if frames > handle.frames:
            raise ValueError(f"--frames {frames}: the toy model was trained on {handle.frames}-frame clips "
                             "(its RoPE is sized for them); use at most that many")
        if height % handle.patch_px or width % handle.patch_px:
            raise ValueError(f"--height/--width {height}x{width}: the toy model needs multiples of "
                             f"{handle.patch_px} px")
        return
    handle.family.geometry(handle.transformer, handle.vae, frames, height, width)


@torch.no_grad()
def capture_amf(family, transformer, latent: torch.Tensor, text: torch.Tensor, block: int) -> np.ndarray:
    """``[F, F, h*w, 2]`` float32: the argmax AMF of ``latent`` at timestep 0 under ``text`` at ``block``
    (installs the family's processors when none are, and leaves them as found)."""
    from ..api import compute_amf

    n = len(family.blocks(transformer))
    if not 0 <= block < n:
        raise ValueError(f"--block {block}: the model has blocks 0 to {n - 1}")
    installed = getattr(transformer, "_ditflow_guidance", None) is not None
    if not installed:
        family.install(transformer)
    try:
        ctrl = family.run_until(transformer, latent, text, 0, None, stop_after=block, qk_blocks=(block,))
        q, k = ctrl.qk[block]
        ctrl.clear_captures()
    finally:
        if not installed:
            family.uninstall(transformer)
    f, h, w = family.token_grid(transformer, latent)
    return compute_amf(q, k, frames=f, height=h, width=w, mode="argmax")[0].float().cpu().numpy()


def reference_amf(handle: ModelHandle, frames: np.ndarray, block: int | None = None) -> tuple[np.ndarray, dict]:
    """The reference AMF of ``frames`` (uint8 ``[T, H, W, 3]``) and its geometry: ``(amf, info)``."""
    block = handle.default_block if block is None else int(block)
    latent = handle.encode(frames)
    amf = capture_amf(handle.family, handle.transformer, latent, handle.empty, block)
    f, h, w = handle.family.token_grid(handle.transformer, latent)
    return amf, dict(frames=f, height=h, width=w, block=block, video_frames=int(frames.shape[0]),
                     video_height=int(frames.shape[1]), video_width=int(frames.shape[2]))


def frame_for_latent(t_video: int, f_latent: int) -> list[int]:
    """The video frame shown under each latent frame: evenly spread from the first to the last."""
    if f_latent <= 1:
        return [0] * max(f_latent, 1)
    return [round(i * (t_video - 1) / (f_latent - 1)) for i in range(f_latent)]
