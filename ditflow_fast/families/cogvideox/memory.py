"""Predicted peak GPU memory of a guided run, by component, next to the research code's.

The peak of a DiTFlow run is inside an optimisation iteration (the denoising forwards run without
autograd, and the VAE decodes after the loop, sliced/tiled). With ``T = L_text + N`` tokens of width
``D``, ``N = F*h*w`` video tokens, ``g`` the last guidance block and ``b`` bytes per element:

- weights: the transformer's parameters (counted exactly from its config, on the meta device), and
  the VAE's unless offloaded; the T5 encoder has been run and offloaded before the loop;
- CogVideoX 1.5: a token covers ``p_t = 2`` latent frames, so ``N = ceil(F / 2) * h * w`` (diffusers pads an
  odd ``F``) and the AMF's frames are those ``ceil(F / 2)`` temporal patches; the optimised latent keeps ``F``;
- activations, in units of one ``[T, D]`` tensor (``T*D*b`` bytes), constants measured with torch's
  memory timeline on CPU runs of CogVideoX-shaped transformers (flash SDPA, which keeps only a
  log-sum-exp; tests/guidance/test_guidance_memory.py re-measures them):
  with gradient checkpointing, ``g + 1`` block inputs (1 each) plus one block recomputed with its
  backward temporaries (15); without, ``g`` full blocks (12 each), the guidance block up to q/k (5)
  and backward temporaries (3);
- captured q and k ``2 * H*N*d * b`` plus their gradients (the same again);
- the AMF: this package's torch backend works in row chunks under a score budget (256 MiB) and
  keeps ``F*N`` log-sum-exps; the research code holds two ``[H, N, N]`` score tensors at once plus
  three ``[N, N]`` copies (``(2H + 3) N^2 b``, :func:`ditflow_fast.backends.reference.research_bytes`);
- the optimised tensor in fp32 with its gradient and Adam's two moments (``4x``);
- image-to-video (``in_channels = 2 x out_channels``): the same tokens (the patch embedding takes the image latents
  as extra channels), so every activation row is the text-to-video model's; the optimised latent has the
  ``out_channels`` latent channels; added (``image latents``): a forward's zero-padded image part and its
  concatenated ``2C``-channel input over the transformer's ``F'`` latent frames (``3 F' C h w b``, a few MiB; the
  one-frame latents of the image and of the reference's first frame held for the run are in it many times over);
  5B-I2V's learned position table is a persistent buffer of the transformer (``(L_text + F_s h_s w_s) D`` elements
  at its sample size, ~104 MiB in bf16), counted with its weights. The image's one-frame VAE encoding runs before
  the loop, as the reference's does (CogVideoX has no image encoder).
"""

from __future__ import annotations

from ..estimate import Estimate, check_block
from .components import image_to_video
from .patches import patch_frames, patch_t

# The entries of the public CogVideoX configs that fix the sizes (so --dry-run needs no download).
PRESETS = {
    "THUDM/CogVideoX-5b": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, in_channels=16,
                               out_channels=16, text_embed_dim=4096, time_embed_dim=512, max_text_seq_length=226,
                               use_rotary_positional_embeddings=True, sample_height=60, sample_width=90,
                               patch_size=2),
    "THUDM/CogVideoX-2b": dict(num_attention_heads=30, attention_head_dim=64, num_layers=30, in_channels=16,
                               out_channels=16, text_embed_dim=4096, time_embed_dim=512, max_text_seq_length=226,
                               use_rotary_positional_embeddings=False, sample_height=60, sample_width=90,
                               patch_size=2),
    # CogVideoX 1.5 text-to-video: 5B's entries with diffusers' scripts/convert_cogvideox_to_diffusers.py
    # (version "1.5": patch_size_t 2, patch_bias False, sample 300 x 300 latent pixels, 81 frames; ofs_embed_dim
    # only for 1.5 image-to-video). The hub folder's own config.json could not be read here (no network); its
    # sample size sets only the RoPE grid's bound, not the memory.
    "THUDM/CogVideoX1.5-5B": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, in_channels=16,
                                  out_channels=16, text_embed_dim=4096, time_embed_dim=512, max_text_seq_length=226,
                                  use_rotary_positional_embeddings=True, sample_height=300, sample_width=300,
                                  sample_frames=81, patch_size=2, patch_size_t=2, patch_bias=False),
    # Image-to-video, with diffusers' scripts/convert_cogvideox_to_diffusers.py (--i2v): in_channels 32 (the image
    # latents in channels); 1.0 (5B-I2V): use_learned_positional_embeddings, the 1.0 sample size 60 x 90 latent
    # pixels, 49 frames; 1.5: ofs_embed_dim 512. Not read from the hub folders here (no network).
    "THUDM/CogVideoX-5b-I2V": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, in_channels=32,
                                   out_channels=16, text_embed_dim=4096, time_embed_dim=512, max_text_seq_length=226,
                                   use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True,
                                   sample_height=60, sample_width=90, sample_frames=49, patch_size=2),
    "THUDM/CogVideoX1.5-5B-I2V": dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, in_channels=32,
                                      out_channels=16, text_embed_dim=4096, time_embed_dim=512,
                                      max_text_seq_length=226, use_rotary_positional_embeddings=True,
                                      sample_height=300, sample_width=300, sample_frames=81, patch_size=2,
                                      patch_size_t=2, patch_bias=False, ofs_embed_dim=512),
}
VAE_PARAMS = 215_583_907  # AutoencoderKLCogVideoX() (the public models' VAE), counted on the meta device
# Activation constants in [T, D] tensors (see the module docstring; measured, tests re-measure them).
CKPT_INPUT, CKPT_RECOMPUTE = 1, 15
BLOCK_ACTIVATIONS, PARTIAL_BLOCK, BACKWARD_TEMPS = 12, 5, 3


def transformer_params(config: dict, *, buffers: bool = False) -> int:
    """Exact parameter count of a CogVideoX transformer built from ``config`` on the meta device; ``buffers``: plus
    its persistent buffers (5B-I2V's learned position table, loaded with the weights)."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    if buffers:
        n += sum(b.numel() for name, b in model.named_buffers() if name in model.state_dict())
    return n



def estimate(config: dict, *, frames: int, height: int, width: int, guidance_block: int, bytes_per_elem: int = 2,
             opt_mode: str = "latent", checkpointing: bool = True, vae_offload: bool = False,
             vae_params: int = VAE_PARAMS, temporal: int = 4, spatial: int = 8) -> Estimate:
    """Predicted peak bytes by component for ``frames`` video frames at ``height x width`` pixels."""
    check_block(guidance_block, int(config["num_layers"]))  # as the other families' models: the run refuses it
    heads, hd = config["num_attention_heads"], config["attention_head_dim"]
    dim, p, b = heads * hd, config.get("patch_size", 2), bytes_per_elem
    lat_f, lh, lw = (frames - 1) // temporal + 1, height // spatial, width // spatial
    hh, ww = lh // p, lw // p
    tok_f = patch_frames(lat_f, patch_t(config))  # the AMF's frames: temporal patches for 1.5
    n = tok_f * hh * ww
    t = config.get("max_text_seq_length", 226) + n
    td = t * dim * b
    i2v = image_to_video(config)
    c = int(config.get("out_channels") or config["in_channels"])  # the latent's channels (an I2V input has 2c)
    base = {"transformer weights": transformer_params(config, buffers=i2v) * b,
            "VAE weights": 0 if vae_offload else vae_params * b}
    if checkpointing:
        acts = {"checkpointed block inputs": (guidance_block + 1) * CKPT_INPUT * td,
                "one block recomputed + backward": CKPT_RECOMPUTE * td}
    else:
        acts = {"block activations (no ckpt)": (guidance_block * BLOCK_ACTIVATIONS + PARTIAL_BLOCK
                                                + BACKWARD_TEMPS) * td}
    if opt_mode == "latent":
        opt_elems = lat_f * c * lh * lw
    elif config.get("use_rotary_positional_embeddings"):
        opt_elems = 4 * n * hd  # separate query and key RoPE, cos and sin
    else:
        opt_elems = n * dim
    shared = {"captured q, k and grads": 4 * heads * n * hd * b}
    if i2v:  # a forward's zero-padded image part and its 2c-channel input, over the padded latent frames
        shared["image latents"] = 3 * tok_f * patch_t(config) * c * lh * lw * b
    return Estimate.build(base, acts, acts, shared, heads=heads, grid=(tok_f, hh, ww), bytes_per_elem=b,
                          opt_elems=opt_elems)


def config_for(model: str) -> dict:
    """Transformer config entries for a preset hub id, or read from a local model folder."""
    if model in PRESETS:
        return dict(PRESETS[model])
    from ...errors import broken_import, cannot_load

    try:
        from diffusers import CogVideoXTransformer3DModel

        cfg = CogVideoXTransformer3DModel.load_config(model, subfolder="transformer")
    except Exception as exc:
        if broken_import(exc):
            raise cannot_load(model, exc) from exc
        raise ValueError(f"--model {model}: cannot be loaded: no readable transformer config ({exc}); "
                         f"presets: {', '.join(PRESETS)}") from exc
    return {k: v for k, v in cfg.items() if not k.startswith("_")}
