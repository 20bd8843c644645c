"""HunyuanVideo prompts: the pipeline's own ``encode_prompt``, and the packed tensor that carries them.

``HunyuanVideoPipeline.encode_prompt`` gives three tensors per prompt: the Llama hidden states ``[1, L, D]``
(the third-last layer, the template's first 95 tokens cropped, padded to ``L`` = 256), their attention mask
``[1, L]`` and CLIP's pooled embedding ``[1, P]``. The guidance loop hands a family one ``[1, L, width]``
tensor per prompt, so this family packs the three along the last axis (:func:`pack`)::

    [..., :D]        the Llama hidden states (D = transformer text_embed_dim, 4096)
    [..., D]         the attention mask: 1 for a real token, 0 for padding (a prefix of ones)
    [..., D + 1:]    CLIP's pooled embedding (P = pooled_projection_dim, 768), the same on every token

so ``width = D + 1 + P`` (4865 for the public model) and the token axis is the text's own: the joint attention
sees ``L`` text tokens after the video ones. A ``--prompt-embeds`` file for HunyuanVideo holds such packed
tensors under the usual names (``prompt``, and ``empty`` for the reference pass, else ``negative``; the model is
guidance-distilled, so ``negative`` is not used for guidance); write one from a pipeline with
``pack(*pipe.encode_prompt(text))``. A missing ``negative`` becomes zeros, whose mask holds no token: refused.
"""

from __future__ import annotations

import torch

from ..base import ModelError
from ..text_encoders import check_text_folders, release

MAX_SEQUENCE_LENGTH = 256  # HunyuanVideoPipeline.__call__'s (and encode_prompt's) default
_HINT = ("or pass --prompt-embeds FILE (tensors 'prompt' and 'empty' (or 'negative'), each [1, L, D + 1 + P]: the "
         "Llama embeddings, the mask and the pooled CLIP embedding packed as ditflow_fast.families.hunyuan.text.pack "
         "does; 4865 wide for HunyuanVideo)")


def pack(embeds: torch.Tensor, pooled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``encode_prompt``'s ``(prompt_embeds [B, L, D], pooled [B, P], mask [B, L])`` -> ``[B, L, D + 1 + P]``
    float32 (the order ``encode_prompt`` returns them in: ``pack(*pipe.encode_prompt(text))``)."""
    b, n, _ = embeds.shape
    if tuple(mask.shape) != (b, n) or pooled.dim() != 2 or pooled.shape[0] != b:
        raise ValueError(f"pack: embeddings {tuple(embeds.shape)}, pooled {tuple(pooled.shape)} and mask "
                         f"{tuple(mask.shape)} do not fit together ([B, L, D], [B, P], [B, L])")
    return torch.cat([embeds.float(), mask.float()[..., None], pooled.float()[:, None].expand(b, n, -1)], dim=-1)


def unpack(text: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, L, D + 1 + P]`` -> ``(embeds [B, L, D], mask [B, L], pooled [B, P])`` in ``text``'s dtype; a
    ``ValueError`` when the mask column is not a prefix of ones (or holds none: the model divides by its sum)."""
    if text.dim() != 3 or text.shape[-1] <= pooled_dim + 1:
        raise ValueError(f"a HunyuanVideo prompt tensor is [B, L, D + 1 + {pooled_dim}] (text_encoder's width, the "
                         f"mask, the pooled embedding), got {tuple(text.shape)}")
    d = text.shape[-1] - 1 - pooled_dim
    mask = text[..., d]
    ones = mask.float().sum(dim=1)
    prefix = (torch.arange(mask.shape[1], device=mask.device) < ones[:, None]).float()
    if not torch.equal(mask.float(), prefix) or bool((ones < 1).any()):
        raise ValueError("a HunyuanVideo prompt tensor's mask column (index text_embed_dim) must be ones for the real "
                         "tokens, then zeros, with at least one token (see ditflow_fast.families.hunyuan.text.pack; a "
                         "--prompt-embeds file without 'empty' and 'negative' leaves zeros for the reference pass)")
    return text[..., :d], mask, text[:, 0, d + 1:]


def _pipeline(model: str, dtype):
    try:
        from diffusers import HunyuanVideoPipeline
    except Exception as exc:  # diffusers' lazy import turns a missing transformers into a RuntimeError
        raise ModelError(f"encoding --prompt for HunyuanVideo needs transformers (pip install -e '.[text]'), {_HINT}"
                         ) from exc
    check_text_folders(model, ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"), "the text encoders",
                       _HINT)
    try:  # only the text components: the transformer and the VAE are the loop's
        return HunyuanVideoPipeline.from_pretrained(model, transformer=None, vae=None, scheduler=None, dtype=dtype)
    except Exception as exc:  # hub/network/format errors come in many types
        raise ModelError(f"--prompt: cannot load the text encoders of {model} ({type(exc).__name__}: {exc}); "
                         f"{_HINT}") from exc


@torch.no_grad()
def pipeline_prompt(pipe, text: str, device, dtype, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
    """One prompt through ``pipe.encode_prompt`` (its default template, Llama + CLIP), packed: ``[1, L, D + 1 + P]``."""
    embeds, pooled, mask = pipe.encode_prompt(text, device=device, dtype=dtype,
                                              max_sequence_length=max_sequence_length)
    return pack(embeds, pooled, mask)


def encode_prompts(model: str, texts: dict[str, str], device, dtype) -> dict[str, torch.Tensor]:
    """``{name: text}`` -> ``{name: [1, 256, D + 1 + P] float32}`` on the CPU, by the pipeline's own
    ``encode_prompt`` with the text encoders of ``model`` (a folder or hub id). They are loaded in ``dtype`` onto
    ``device`` (Llava-Llama-3-8B: 16 GB in bf16), run and released before returning."""
    pipe = _pipeline(model, dtype)
    try:
        pipe.to(device)
        return {name: pipeline_prompt(pipe, text, device, dtype).cpu() for name, text in texts.items()}
    finally:
        del pipe
        release(device)
