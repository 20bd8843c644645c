"""A model folder's own text encoder for ``--prompt``: loaded onto the device, run, and released before the loop
(it never shares the GPU with it). The errors name ``--prompt`` and say the way round it, ``--prompt-embeds``."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import ModelError


def check_text_folders(model: str, need: tuple[str, ...], what: str, hint: str) -> None:
    """A local folder without the ``need`` subfolders is refused by name (``what``: "a text encoder", ...); a hub
    id is left to the loader."""
    local = Path(model).expanduser()
    if local.exists():
        missing = [d for d in need if not (local / d).is_dir()]
        if missing:
            raise ModelError(f"--prompt: the model folder {model} has no {' or '.join(m + '/' for m in missing)} "
                             f"({what} to encode prompts with); {hint}")


def load_tokenizer_and_encoder(model: str, encoder: str, family: str, hint: str, device, dtype):
    """``(tokenizer, encoder)`` from ``model``'s ``tokenizer/`` and ``text_encoder/`` (a folder or hub id):
    transformers' ``AutoTokenizer`` and ``encoder`` (a class name: ``T5EncoderModel``, ...) in ``dtype``, on
    ``device`` in eval mode without gradients. ``family`` ("an LTX model", ...) and ``hint`` go in the errors."""
    try:
        import transformers

        tokenizer_class, encoder_class = transformers.AutoTokenizer, getattr(transformers, encoder)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"encoding --prompt for {family} needs transformers and sentencepiece "
                         f"(pip install -e '.[text]' in the checkout), {hint}") from exc
    check_text_folders(model, ("tokenizer", "text_encoder"), "a text encoder", hint)
    try:
        tok = tokenizer_class.from_pretrained(model, subfolder="tokenizer")
        enc = encoder_class.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype)
    except Exception as exc:  # hub/network/format errors come in many types
        raise ModelError(f"--prompt: cannot load the tokenizer/text encoder of {model} "
                         f"({type(exc).__name__}: {exc}); {hint}") from exc
    return tok, enc.to(device).eval().requires_grad_(False)


def release(device) -> None:
    """After the caller dropped its encoder: hand the device memory back before the loop."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def tiny_word_tokenizer():
    """The tiny test folders' tokenizer (``tokenizers.Tokenizer``): word-level, trained on four captions, with
    ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, as the families' ``save_tiny_*`` text encoders expect."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["a dog running on a beach", "a cat jumping over a fence", "a car driving down a road at night",
              "the camera pans left over a red boat"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    return tok
