"""Tiny CogVideoX components built from configs (no download), for tests and a CPU smoke run.

``write_tiny_assets(OUT)`` (or ``python -m ditflow_fast.cli.tiny OUT``) writes ``OUT/model`` (transformer,
VAE, scheduler saved with ``save_pretrained``, plus ``prompt_embeds.safetensors``) and ``OUT/video.mp4``
(a moving square), then ``ditflow-fast transfer --model OUT/model --video OUT/video.mp4 --prompt-embeds
OUT/model/prompt_embeds.safetensors --frames 9 --height 48 --width 64`` runs end to end on a CPU.
With ``text_encoder=True`` (``--text-encoder``) the model also gets a tokenizer trained here and a tiny T5
encoder, and ``--prompt TEXT`` replaces ``--prompt-embeds``. ``v15=True``: a CogVideoX 1.5-style model
(``patch_size_t=2``, no patch bias, RoPE sliced from a 3 x 4 patch grid: 48x64 pixels at most) with the DDIM
scheduler config CogVideoX folders ship. ``i2v=True``: a ``CogVideoXImageToVideoPipeline`` folder
(:func:`tiny_i2v_pipeline`; with ``v15`` 1.5-I2V-like, else 5B-I2V-like) and ``OUT/image.png``; ``--image
OUT/image.png`` then runs it.
The weights are random: the output is noise-like; the run exercises every code path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TEXT_LEN, TEXT_DIM = 7, 16
HEIGHT, WIDTH, FRAMES = 48, 64, 9  # pixels; latent 6 x 8, 3 latent frames, 3 x 4 patches per frame


def tiny_transformer(rope: bool = True, layers: int = 3, seed: int = 0, *, v15: bool = False, ofs: bool = False,
                     i2v: bool = False, learned: bool = False):
    """``v15``: 1.5's layout (temporal patches of 2 latent frames, no patch bias); ``ofs``: with 1.5 I2V's ofs
    embedding (its width must be ``time_embed_dim``: the two embeddings are summed); ``i2v``: twice the latent
    channels in (CogVideoXImageToVideoPipeline's image latents); ``learned``: 5B-I2V's learned position table
    (beside RoPE; it fixes the size to 48x64, and is used at ``FRAMES`` frames)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    v15_kw = dict(patch_size_t=2, patch_bias=False) if v15 else {}
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8 if i2v else 4, out_channels=4, time_embed_dim=8,
        text_embed_dim=TEXT_DIM, num_layers=layers, sample_width=WIDTH // 8, sample_height=HEIGHT // 8,
        sample_frames=FRAMES, patch_size=2, max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=rope,
        use_learned_positional_embeddings=learned, ofs_embed_dim=8 if ofs else None, **v15_kw,
    ).eval()


def tiny_vae(seed: int = 0, *, invert_scale_latents: bool = False):
    """``invert_scale_latents``: 1.5-I2V's VAE flag (its image latents are divided by ``scaling_factor``)."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        invert_scale_latents=invert_scale_latents,
    ).eval()


def tiny_scheduler(rope: bool = True, *, folder: bool = False):
    """The scheduler DiTFlow pairs with the model: DPM for RoPE (5B-like), DDIM otherwise (2B-like).
    ``folder``: the DDIM config CogVideoX folders ship (diffusers' convert_cogvideox_to_diffusers.py; 5B and
    1.5-5B: snr_shift_scale 1.0), which the family turns into DPM for RoPE models."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = CogVideoXDPMScheduler if rope and not folder else CogVideoXDDIMScheduler
    extra = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=True) \
        if folder else {}
    return cls(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
               snr_shift_scale=1.0, clip_sample=False, **extra)


def tiny_prompt_embeds(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g),
            "negative": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)}


def tiny_text_encoder(seed: int = 0):
    """``(tokenizer, encoder)``: a word-level tokenizer trained here on a few sentences and a 1-layer T5 encoder
    of width ``TEXT_DIM`` (needs ``transformers``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["a dog running on a beach", "a cat jumping over a fence", "a car driving down a road at night"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=tok.get_vocab_size(), d_model=TEXT_DIM, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    return (PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"),
            T5EncoderModel(cfg))


def save_tiny_text_encoder(path, seed: int = 0) -> None:
    """:func:`tiny_text_encoder` saved as ``tokenizer/`` and ``text_encoder/``."""
    tok, enc = tiny_text_encoder(seed)
    tok.save_pretrained(Path(path) / "tokenizer")
    enc.save_pretrained(Path(path) / "text_encoder")


def tiny_pipeline15(text_encoder: bool = False, layers: int = 3, seed: int = 0):
    """A CogVideoX 1.5-style ``CogVideoXPipeline`` (random weights; the T5 only with ``text_encoder``)."""
    from diffusers import CogVideoXPipeline

    tok, enc = tiny_text_encoder(seed) if text_encoder else (None, None)
    return CogVideoXPipeline(tokenizer=tok, text_encoder=enc, vae=tiny_vae(seed),
                             transformer=tiny_transformer(True, layers, seed, v15=True),
                             scheduler=tiny_scheduler(True, folder=True))


def tiny_i2v_pipeline(v15: bool = False, text_encoder: bool = False, layers: int = 3, seed: int = 0):
    """A ``CogVideoXImageToVideoPipeline`` (random weights) shaped as the public configs differ from the text-to-video
    ones: twice the latent channels in; 5B-I2V-like: RoPE and a learned position table; ``v15``: 1.5-I2V-like
    (temporal patches, the ofs embedding, a VAE with ``invert_scale_latents``). The scheduler: the DDIM config
    CogVideoX folders ship."""
    from diffusers import CogVideoXImageToVideoPipeline

    tok, enc = tiny_text_encoder(seed) if text_encoder else (None, None)
    tr = tiny_transformer(True, layers, seed, v15=v15, ofs=v15, i2v=True, learned=not v15)
    return CogVideoXImageToVideoPipeline(tokenizer=tok, text_encoder=enc, vae=tiny_vae(seed, invert_scale_latents=v15),
                                         transformer=tr, scheduler=tiny_scheduler(True, folder=True))


def save_tiny_model(path, rope: bool = True, text_encoder: bool = False, v15: bool = False,
                    i2v: bool = False) -> Path:
    """Write a tiny model folder (``transformer/``, ``vae/``, ``scheduler/``, ``prompt_embeds.safetensors``,
    and with ``text_encoder=True`` a tokenizer and T5 encoder so that ``--prompt`` works). ``v15``: the whole
    :func:`tiny_pipeline15` saved by its ``save_pretrained`` (with ``model_index.json``, as the hub folder);
    ``i2v``: :func:`tiny_i2v_pipeline` so (1.5-I2V-like with ``v15``)."""
    from safetensors.torch import save_file

    path = Path(path)
    if i2v:
        tiny_i2v_pipeline(v15, text_encoder).save_pretrained(path)
    elif v15:
        tiny_pipeline15(text_encoder).save_pretrained(path)
    else:
        tiny_transformer(rope).save_pretrained(path / "transformer")
        tiny_vae().save_pretrained(path / "vae")
        tiny_scheduler(rope).save_pretrained(path / "scheduler")
        if text_encoder:
            save_tiny_text_encoder(path)
    save_file(tiny_prompt_embeds(), str(path / "prompt_embeds.safetensors"))
    return path


def moving_square(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``[frames, height, width, 3]`` uint8: a bright square moving right over a gradient."""
    yy, xx = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), np.uint8)
    side = max(4, height // 4)
    for f in range(frames):
        img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                        np.full_like(xx, 64)], axis=-1).astype(np.uint8)
        x0 = (f * 3) % max(width - side, 1)
        y0 = height // 2 - side // 2
        img[y0:y0 + side, x0:x0 + side] = 255
        video[f] = img
    return video


def first_frame(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``[height, width, 3]`` uint8: another first frame than :func:`moving_square`'s (a dark square on the left over
    a reversed gradient), the image of the tiny image-to-video runs."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([255 - xx * 255 // max(width - 1, 1), np.full_like(xx, 160), yy * 255 // max(height - 1, 1)],
                   axis=-1).astype(np.uint8)
    side = max(4, height // 3)
    img[2:2 + side, 2:2 + side] = 20
    return img


def write_tiny_assets(out, rope: bool = True, text_encoder: bool = False, v15: bool = False,
                      frames: int = FRAMES, i2v: bool = False) -> Path:
    """``out/model`` (:func:`save_tiny_model`) and ``out/video.mp4`` (:func:`moving_square`); with ``i2v`` also
    ``out/image.png`` (:func:`first_frame`); returns ``out``."""
    from ...video_io import write_video

    out = Path(out)
    save_tiny_model(out / "model", rope=rope, text_encoder=text_encoder, v15=v15, i2v=i2v)
    write_video(moving_square(frames), out / "video.mp4", fmt="mp4", fps=8)
    if i2v:
        from PIL import Image

        Image.fromarray(first_frame()).save(out / "image.png")
    return out
