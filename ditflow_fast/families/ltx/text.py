"""LTX-Video prompt embeddings from the model's own T5 encoder, through ``LTXPipeline.encode_prompt``.

The pipeline pads every prompt to 128 tokens and hands the transformer the padding mask, which its
cross-attention turns into a bias of -10000 on the padded keys (``exp(-10000)`` is 0 in float32: those
keys get no weight). The guidance loop passes text without a mask, so the family keeps each prompt's real
tokens only (the mask's count): the same cross-attention, without the padding. A ``--prompt-embeds`` file for
LTX should hold the real tokens likewise (``prompt_embeds[:, :mask.sum()]``); padded tokens in a file are
attended like any other. The encoder (T5-XXL, 4.76 B parameters: 9.5 GB in bf16) is loaded onto ``device``,
run and released before returning, so it never shares the GPU with the denoising loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..text_encoders import load_tokenizer_and_encoder, release
from .presets import TEXT_LEN

_HINT = ("or pass --prompt-embeds FILE (tensors 'prompt', 'negative' and optionally 'empty', each [1, L, D] with "
         "L <= 128 real T5 tokens and D the transformer's caption_channels, 4096 for LTX-Video)")


def real_tokens(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[1, L, D]`` of the pipeline's padded ``[1, 128, D]`` prompt: the tokens its mask keeps (at least one:
    T5 always appends ``</s>``, so only a broken tokenizer gives none)."""
    if embeds.shape[0] != 1:
        raise ValueError(f"one prompt at a time, got a batch of {embeds.shape[0]}")
    n = max(int(mask.reshape(-1).gt(0).sum()), 1)
    return embeds[:, :n]


@torch.no_grad()
def encode_with(pipe, text: str, device, dtype) -> torch.Tensor:
    """``[1, L, D]``: ``text`` through ``pipe.encode_prompt`` (an ``LTXPipeline``, or one holding only its
    tokenizer and text encoder), cut to the real tokens by the mask it returns."""
    embeds, mask, _, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                            max_sequence_length=TEXT_LEN, device=device, dtype=dtype)
    return real_tokens(embeds, mask)


def encode_prompts_t5(model: str, texts: dict[str, str], device, dtype) -> dict[str, torch.Tensor]:
    """``{name: text}`` -> ``{name: [1, L, D] float32}`` on the CPU, from the ``tokenizer/`` and ``text_encoder/``
    of ``model`` (a folder or hub id), each through :func:`encode_with`. Raises :class:`ModelError` naming
    ``--prompt`` when transformers is missing or the model has no text encoder."""
    from diffusers import LTXPipeline

    tok, enc = load_tokenizer_and_encoder(model, "T5EncoderModel", "an LTX model", _HINT, device, dtype)
    try:
        pipe = LTXPipeline(scheduler=None, vae=None, text_encoder=enc, tokenizer=tok, transformer=None)
        return {name: encode_with(pipe, text, device, dtype).float().cpu() for name, text in texts.items()}
    finally:
        del enc
        release(device)


def save_tiny_t5(path, d_model: int, seed: int = 0) -> Path:
    """Write ``path/tokenizer`` (a word-level tokenizer trained here on a few sentences, appending ``</s>`` as
    T5's does) and ``path/text_encoder`` (a 1-layer ``T5EncoderModel`` of width ``d_model``). Needs
    ``transformers`` and ``tokenizers``."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from ..text_encoders import tiny_word_tokenizer

    path = Path(path)
    tok = tiny_word_tokenizer()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=TEXT_LEN).save_pretrained(path / "tokenizer")
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(cfg).save_pretrained(path / "text_encoder")
    return path
