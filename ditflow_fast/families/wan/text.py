"""Wan prompt embeddings from the model's own umT5 encoder, as diffusers' ``WanPipeline`` makes them.

``WanPipeline._get_t5_prompt_embeds``: clean the prompt (``prompt_clean``: ftfy when installed, HTML
unescaping, whitespace), tokenize with padding to ``max_length`` (512) and truncation, run the
``UMT5EncoderModel`` with the attention mask, cut each sequence to its real length (the mask's sum)
and pad it back to ``max_length`` with zeros. The encoder (umT5-XXL: 5.7 B parameters, 11.4 GB in
bf16) is loaded onto ``device``, run and released before returning, so it never shares the GPU with
the denoising loop.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from ..text_encoders import load_tokenizer_and_encoder, release

_HINT = ("or pass --prompt-embeds FILE (tensors 'prompt', 'negative' and optionally 'empty', each [1, 512, D] with "
         "D the transformer's text_dim, 4096 for Wan2.1/2.2)")


def _clean(text: str) -> str:
    """diffusers' Wan ``prompt_clean`` (ftfy only when installed, as there)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_prompts_umt5(model: str, texts: dict[str, str], device, dtype, max_length: int = 512
                        ) -> dict[str, torch.Tensor]:
    """``{name: text}`` -> ``{name: [1, max_length, D] float32}`` on the CPU, from the ``tokenizer/``
    and ``text_encoder/`` (``UMT5EncoderModel``) of ``model`` (a folder or hub id); entries after
    each prompt's real length are zeros, as WanPipeline gives them. Raises :class:`ModelError`
    naming ``--prompt`` when transformers is missing or the model has no text encoder."""
    tok, enc = load_tokenizer_and_encoder(model, "UMT5EncoderModel", "a Wan model", _HINT, device, dtype)
    out = {}
    try:
        for name, text in texts.items():
            inputs = tok([_clean(text)], padding="max_length", max_length=max_length, truncation=True,
                         add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            ids, mask = inputs.input_ids, inputs.attention_mask
            length = int(mask.gt(0).sum(dim=1)[0])
            hidden = enc(ids.to(device), mask.to(device)).last_hidden_state[0, :length].float().cpu()
            padded = torch.zeros(max_length, hidden.shape[-1], dtype=torch.float32)
            padded[:length] = hidden
            out[name] = padded[None]
    finally:
        del enc
        release(device)
    return out


def save_tiny_umt5(path, d_model: int | None = None, seed: int = 0) -> Path:
    """Write ``path/tokenizer`` (a word-level tokenizer trained here on a few sentences) and
    ``path/text_encoder`` (a 1-layer ``UMT5EncoderModel`` of width ``d_model``, by default the tiny
    Wan transformer's ``text_dim``), e.g. into a :func:`ditflow_fast.families.wan.tiny.save_tiny_wan`
    folder so that ``--prompt`` works there. Needs ``transformers`` and ``tokenizers``."""
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from ..text_encoders import tiny_word_tokenizer
    from .tiny import TEXT_DIM

    path = Path(path)
    tok = tiny_word_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path / "tokenizer")
    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=tok.get_vocab_size(), d_model=d_model or TEXT_DIM, d_kv=4, d_ff=32, num_layers=1,
                     num_heads=2, pad_token_id=0, eos_token_id=1)
    UMT5EncoderModel(cfg).save_pretrained(path / "text_encoder")
    return path
