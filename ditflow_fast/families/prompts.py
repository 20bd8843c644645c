"""Prompt embeddings for any family: from a ``--prompt-embeds`` file or the family's own text encoder.

Here, above the families, rather than in ``guidance.models`` (which the families build on), so that
no module imports one that imports it back.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..guidance.models import read_prompt_file
from . import family_of
from .base import ModelError


def prompt_embeddings(model: str, prompt: str | None, negative: str, embeds_file, transformer, *,
                      device="cpu", dtype=torch.float32, family=None):
    """``{"prompt", "negative", "empty"}`` -> ``[1, L, D]`` float32, from a file or the model's text
    encoder (T5 for CogVideoX, umT5 for Wan: the family says which, and the length and width it needs).

    The encoder is loaded in ``dtype`` onto ``device``, run, and released before returning, so it
    never shares the GPU with the denoising loop. NaN or inf in a file's tensors is refused, naming
    the file and the tensor."""
    if family is None:
        family = family_of(transformer)
    need_len, dim = family.text_spec(transformer)
    where = ""
    if embeds_file is not None:
        path = Path(embeds_file)
        t = read_prompt_file(path)
        where = f" in --prompt-embeds {path}"
        out = {"prompt": t["prompt"], "negative": t.get("negative", torch.zeros_like(t["prompt"]))}
        out["empty"] = t.get("empty", out["negative"])
    else:
        out = family.encode_prompts(model, {"prompt": prompt, "negative": negative, "empty": ""}, transformer,
                                    device, dtype)
    for k, v in out.items():
        if v.dim() != 3 or v.shape[0] != 1 or v.shape[-1] != dim:
            raise ModelError(f"prompt embedding {k!r}{where} must be [1, L, {dim}], got {tuple(v.shape)}")
        if need_len is not None and v.shape[1] != need_len:
            raise ModelError(f"prompt embedding {k!r}{where} must have {need_len} tokens for this model")
        if not torch.isfinite(v).all():
            raise ModelError(f"prompt embedding {k!r}{where} holds {int((~torch.isfinite(v)).sum())} non-finite "
                             "values (NaN or inf)")
    return {k: v.float() for k, v in out.items()}
