"""Prompt embeddings for any family: from a ``--prompt-embeds`` file or the family's own text encoder.

A ``--prompt-embeds`` file is safetensors: tensor ``prompt`` ``[1, L, D]`` and optionally ``negative``
(the negative prompt) and ``empty`` (the empty prompt, used for the reference pass; defaults to
``negative``), ``L`` the model's text length, ``D`` its text width.

Here, above the families (it asks the registry for a transformer's family), and shared by all of them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import family_of
from .base import ModelError

# text encoders' outputs stay far below this; one beyond it is broken, and half precision (max 65504)
# overflows on it in attention (a black video, or NaN after the model has loaded)
PROMPT_LIMIT = 1e4


def read_prompt_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``--prompt-embeds`` file (safetensors, no pickle), checked for a ``prompt`` and for
    values that are non-finite or beyond ``+-PROMPT_LIMIT``."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"--prompt-embeds {path}: no such file")
    try:
        t = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"--prompt-embeds {path}: unreadable ({exc})") from exc
    if "prompt" not in t:
        raise ModelError(f"--prompt-embeds {path}: needs a tensor named 'prompt' (has {sorted(t)})")
    for k, v in t.items():
        if not v.is_floating_point() or not v.numel():
            continue
        if not torch.isfinite(v).all():
            raise ModelError(f"--prompt-embeds {path}: tensor {k!r} holds {int((~torch.isfinite(v)).sum())} "
                             "non-finite values (NaN or inf)")
        if v.abs().max() > PROMPT_LIMIT:
            raise ModelError(f"--prompt-embeds {path}: tensor {k!r} holds values up to |x| = "
                             f"{float(v.abs().max()):.3g}; a text embedding stays within +-{PROMPT_LIMIT:.0e}")
    return t


def prompt_embeddings(model: str, prompt: str | None, negative: str, embeds_file, transformer, *,
                      device="cpu", dtype=torch.float32, family=None):
    """``{"prompt", "negative", "empty"}`` -> ``[1, L, D]`` float32, from a file or the model's text
    encoder (T5 for CogVideoX, umT5 for Wan: the family says which, and the length and width it needs).

    The encoder is loaded in ``dtype`` onto ``device``, run, and released before returning, so it
    never shares the GPU with the denoising loop. NaN or inf in a file's tensors is refused, naming
    the file and the tensor."""
    if family is None:
        family = family_of(transformer)
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
    return check_embeddings(out, transformer, family, where)


def check_embeddings(out: dict, transformer, family, where: str = "") -> dict:
    """``out``'s embeddings as float32, after checking their shape against the family's text spec and their
    values for NaN or inf; ``where`` names their source in the errors."""
    need_len, dim = family.text_spec(transformer)
    for k, v in out.items():
        if v.dim() != 3 or v.shape[0] != 1 or v.shape[-1] != dim:
            raise ModelError(f"prompt embedding {k!r}{where} must be [1, L, {dim}], got {tuple(v.shape)}")
        if need_len is not None and v.shape[1] != need_len:
            raise ModelError(f"prompt embedding {k!r}{where} must have {need_len} tokens for this model")
        if not torch.isfinite(v).all():
            raise ModelError(f"prompt embedding {k!r}{where} holds {int((~torch.isfinite(v)).sum())} non-finite "
                             "values (NaN or inf)")
    return {k: v.float() for k, v in out.items()}
