"""Tiny HunyuanVideo components built from configs with diffusers' and transformers' classes (no download),
for tests and a CPU smoke run.

``save_tiny_hunyuan(path)`` writes a ``HunyuanVideoPipeline`` folder with ``save_pretrained``: ``transformer/``
(2 dual-stream + 1 single-stream block by default), ``vae/``, ``scheduler/`` (FlowMatchEulerDiscrete, shift 7
as the public folder's), ``text_encoder/`` (a 3-layer ``LlamaModel``), ``tokenizer/``, ``text_encoder_2/`` (a
1-layer ``CLIPTextModel``), ``tokenizer_2/``, plus ``prompt_embeds.safetensors`` (packed prompts, see
:mod:`.text`). The weights are random.

The tokenizers are built here (``tokenizers``, word-level). The Llama one splits text with Llama-3's
pre-tokenisation pattern and adds a begin-of-text token, so that the pipeline's fixed ``crop_start`` (95: the
template's tokens before the user's prompt, counted by Llama-3's tokenizer) cuts this tokenizer's output at the
same place: after cropping, a prompt's tokens and ``<|eot_id|>`` remain (tested).
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM, POOLED_DIM = 16, 8  # Llama hidden size (text_embed_dim), CLIP hidden size (pooled_projection_dim)
TEXT_LEN = 7  # tokens of the random prompt embeddings (the encoders give the pipeline's 256)
Z_DIM = 4
HEIGHT, WIDTH, FRAMES = 48, 80, 9  # pixels; latent 3 x 6 x 10, 3 x 3 x 5 patches
# Llama-3's pre-tokenisation (tiktoken's cl100k-style split): spaces stay on the word that follows
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CORPUS = ["a dog running on a beach", "a cat jumping over a fence", "a red car driving down a road at night",
           "the camera pans left over a boat", "a panda eats bamboo in the snow"]


def tiny_transformer(layers: int = 3, seed: int = 0, single: int | None = None):
    """A HunyuanVideoTransformer3DModel with 2 heads of 16 channels (RoPE split 4/6/6): ``layers`` blocks in all,
    ``single`` of them single-stream (default ``layers // 2``: 3 blocks are dual, dual, single)."""
    from diffusers import HunyuanVideoTransformer3DModel

    single = layers // 2 if single is None else single
    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=Z_DIM, out_channels=Z_DIM, num_attention_heads=2, attention_head_dim=16,
        num_layers=layers - single, num_single_layers=single, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2,
        patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM, rope_theta=256.0, rope_axes_dim=(4, 6, 6)).eval()


def tiny_vae(seed: int = 0):
    """AutoencoderKLHunyuanVideo with 4 channels per level and one layer per block: 8x spatial, 4x temporal
    (causal: 4k + 1 frames), as the real one."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(latent_channels=Z_DIM, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
                                     norm_num_groups=2, mid_block_add_attention=False).eval()


def tiny_scheduler(shift: float = 7.0):
    """What the public folder ships (diffusers' converter: ``FlowMatchEulerDiscreteScheduler(shift=7.0)``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


def random_prompt(generator: torch.Generator, batch: int = 1, length: int = TEXT_LEN, pad: int = 2) -> torch.Tensor:
    """A random packed prompt (:func:`.text.pack`) ``[batch, length, TEXT_DIM + 1 + POOLED_DIM]``: random Llama
    embeddings and pooled embedding, ``length - pad`` real tokens then padding."""
    from .text import pack

    emb = torch.randn(batch, length, TEXT_DIM, generator=generator)
    mask = (torch.arange(length) < max(1, length - pad)).long().expand(batch, -1)
    return pack(emb, torch.randn(batch, POOLED_DIM, generator=generator), mask)


def tiny_prompt_embeds(seed: int = 0, length: int = TEXT_LEN, batch: int = 1) -> dict[str, torch.Tensor]:
    """Random packed ``prompt``, ``negative`` and ``empty`` (what ``--prompt-embeds`` takes for the tiny model)."""
    g = torch.Generator().manual_seed(seed)
    return {name: random_prompt(g, batch, length, pad) for name, pad in (("prompt", 2), ("negative", 3), ("empty", 5))}


def _word_tokenizer(corpus, specials, pre, **tokens):
    from tokenizers import AddedToken, Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=tokens["unk_token"]))
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    return tok, lambda post: PreTrainedTokenizerFast(tokenizer_object=_with(tok, post), padding_side="right",
                                                      **tokens)


def _with(tok, post):
    tok.post_processor = post
    return tok


def tiny_tokenizers():
    """``(tokenizer, tokenizer_2)``: the Llama one (Llama-3's split, ``<|begin_of_text|>`` first) and the CLIP one
    (whitespace words between ``<|startoftext|>`` and ``<|endoftext|>``, which also pads)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import Regex, pre_tokenizers, processors

    template = DEFAULT_PROMPT_TEMPLATE["template"]
    llama_specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>", "<unk>"]
    tok, make = _word_tokenizer([template.format(c) for c in _CORPUS], llama_specials,
                                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<pad>",
                                unk_token="<unk>")
    bos = tok.token_to_id("<|begin_of_text|>")
    llama = make(processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>",
                                                                                                bos)]))
    clip_specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    tok2, make2 = _word_tokenizer(_CORPUS, clip_specials, pre_tokenizers.Whitespace(), bos_token="<|startoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>")
    s, e = tok2.token_to_id("<|startoftext|>"), tok2.token_to_id("<|endoftext|>")
    clip = make2(processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                               special_tokens=[("<|startoftext|>", s), ("<|endoftext|>", e)]))
    return llama, clip


def _vocab(tokenizer) -> int:
    return max(tokenizer.get_vocab().values()) + 1  # the trained word-level ids leave gaps


def tiny_text_encoders(tokenizer, tokenizer_2, seed: int = 0):
    """``(LlamaModel, CLIPTextModel)``: 3 Llama layers (the pipeline reads the third-last hidden state) of width
    TEXT_DIM, 1 CLIP layer of width POOLED_DIM (its pooled output is the pipeline's pooled embedding)."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    llama = LlamaModel(LlamaConfig(vocab_size=_vocab(tokenizer), hidden_size=TEXT_DIM, intermediate_size=32,
                                   num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                                   max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=_vocab(tokenizer_2), hidden_size=POOLED_DIM, intermediate_size=16,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                        projection_dim=POOLED_DIM, pad_token_id=tokenizer_2.pad_token_id,
                                        bos_token_id=tokenizer_2.bos_token_id,
                                        eos_token_id=tokenizer_2.eos_token_id))
    return llama.eval(), clip.eval()


def tiny_pipeline(layers: int = 3, seed: int = 0):
    """A ``HunyuanVideoPipeline`` of tiny random components (on the CPU)."""
    from diffusers import HunyuanVideoPipeline

    tok, tok2 = tiny_tokenizers()
    llama, clip = tiny_text_encoders(tok, tok2, seed)
    return HunyuanVideoPipeline(text_encoder=llama, tokenizer=tok, transformer=tiny_transformer(layers, seed),
                                vae=tiny_vae(seed), scheduler=tiny_scheduler(), text_encoder_2=clip,
                                tokenizer_2=tok2)


def save_tiny_hunyuan(path, layers: int = 3) -> Path:
    """Write a tiny HunyuanVideo diffusers folder with ``HunyuanVideoPipeline.save_pretrained`` (see the module
    docstring); returns its path."""
    from safetensors.torch import save_file

    path = Path(path)
    tiny_pipeline(layers).save_pretrained(str(path))
    save_file(tiny_prompt_embeds(), str(path / "prompt_embeds.safetensors"))
    return path
