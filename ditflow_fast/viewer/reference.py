"""The reference AMF of a video through a model: DiTFlow's reference procedure, for any supported family.

The procedure is ``Guide.reference_targets`` (``guidance/loop.py``): the clean latent of the video at
timestep 0 with the empty prompt, the forward stopped after the chosen block, q/k of the video tokens
recorded there, and ``compute_amf(..., mode="argmax")``: ``[F, F, h*w, 2]`` ``(dx, dy)`` in patches.

Any model that gives a :class:`ModelHandle` (its family, transformer, encoder and empty prompt):

- a diffusers folder of a supported family (``ditflow_fast.families``: CogVideoX, Wan2.1/2.2), encoded
  with its VAE; the empty prompt comes from ``--prompt-embeds`` (its ``empty``, else ``negative``) or
  from the model's text encoder;
- a bundled toy-world model (``assets/tiny_dit``, ``assets/tiny_wan``), opened by the toy world itself
  (``toyworld.amf_model.open_toy``): the viewer imports nothing of the toy world.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # an image-to-video model's inputs for a video (its own first frame, as the guidance loop gives the reference)
    image_inputs: object = None

    @property
    def n_blocks(self) -> int:
        return len(self.family.blocks(self.transformer))


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
    if fam.image_model(cfg):
        def image_inputs(frames: np.ndarray) -> dict:
            return fam.image_condition(comps, frames[0], device=device, dtype=dtype).forward_kw_on(device, dtype)
        handle.image_inputs = image_inputs
    return handle


def open_model(model: str, *, device=None, dtype=torch.float32, prompt_embeds=None) -> ModelHandle:
    """Load the diffusers folder or hub id ``model`` for :func:`reference_amf` (the toy world opens its own
    models as a :class:`ModelHandle` too: ``toyworld.amf_model``)."""
    return _open_diffusers(model, torch.device(device or "cpu"), dtype, prompt_embeds)


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
def capture_amf(family, transformer, latent: torch.Tensor, text: torch.Tensor, block: int, *, qk_rope: bool = True,
                **forward_kw) -> np.ndarray:
    """``[F, F, h*w, 2]`` float32: the argmax AMF of ``latent`` at timestep 0 under ``text`` at ``block``
    (installs the family's processors when none are, and leaves them as found); ``qk_rope``: q/k with their
    RoPE or before it (``GuidanceConfig.amf_rope``); ``forward_kw``: an image-to-video model's image inputs."""
    from ..api import compute_amf

    n = len(family.blocks(transformer))
    if not 0 <= block < n:
        raise ValueError(f"--block {block}: the model has blocks 0 to {n - 1}")
    installed = getattr(transformer, "_ditflow_guidance", None) is not None
    if not installed:
        family.install(transformer)
    try:
        ctrl = family.run_until(transformer, latent, text, 0, None, stop_after=block, qk_blocks=(block,),
                                qk_rope=qk_rope, **forward_kw)
        q, k = ctrl.qk[block]
        ctrl.clear_captures()
    finally:
        if not installed:
            family.uninstall(transformer)
    f, h, w = family.token_grid(transformer, latent)
    return compute_amf(q, k, frames=f, height=h, width=w, mode="argmax")[0].float().cpu().numpy()


def reference_amf(handle: ModelHandle, frames: np.ndarray, block: int | None = None, *,
                  qk_rope: bool = True) -> tuple[np.ndarray, dict]:
    """The reference AMF of ``frames`` (uint8 ``[T, H, W, 3]``) and its geometry: ``(amf, info)``; ``qk_rope``:
    from q/k with RoPE or before it (``GuidanceConfig.amf_rope``)."""
    block = handle.default_block if block is None else int(block)
    latent = handle.encode(frames)
    kw = handle.image_inputs(frames) if handle.image_inputs is not None else {}
    amf = capture_amf(handle.family, handle.transformer, latent, handle.empty, block, qk_rope=qk_rope, **kw)
    f, h, w = handle.family.token_grid(handle.transformer, latent)
    return amf, dict(frames=f, height=h, width=w, block=block, amf_rope=qk_rope, video_frames=int(frames.shape[0]),
                     video_height=int(frames.shape[1]), video_width=int(frames.shape[2]))


def frame_for_latent(t_video: int, f_latent: int) -> list[int]:
    """The video frame shown under each latent frame: evenly spread from the first to the last."""
    if f_latent <= 1:
        return [0] * max(f_latent, 1)
    return [round(i * (t_video - 1) / (f_latent - 1)) for i in range(f_latent)]
