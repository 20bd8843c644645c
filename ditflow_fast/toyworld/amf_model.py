"""The bundled toy-world models (``assets/tiny_dit``, CogVideoX; ``assets/tiny_wan``, Wan) as a viewer
:class:`~ditflow_fast.viewer.reference.ModelHandle`, for ``ditflow-fast amf``.

A toy folder holds ``transformer/``, ``cond_embed.safetensors`` and its own frame codec in ``vae/`` instead of
a diffusers VAE; its empty prompt is the condition table's ``NULL_CONDITION`` row, its clips the world's
(8 frames, 32 x 32), its default block the demo's (``settings.DemoSettings``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..viewer.reference import ModelHandle
from .settings import DEFAULT_DIR


def is_toy_folder(model: str) -> bool:
    p = Path(model).expanduser()
    return (p / "cond_embed.safetensors").is_file() and (p / "transformer" / "config.json").is_file() and \
        not (p / "model_index.json").is_file()


def default_model() -> str:
    return str(DEFAULT_DIR)


def open_toy(model: str, device=None, dtype=torch.float32) -> ModelHandle:
    """A bundled toy-world model for :func:`ditflow_fast.viewer.reference.reference_amf`."""
    from ..families import family_of
    from .codec import check_codec, load_codec
    from .model import load_model, to_family_layout
    from .settings import DemoSettings
    from .world import FRAMES, NULL_CONDITION, SIZE

    device = torch.device(device or "cpu")
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
