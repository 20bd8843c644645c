"""The LTX memory model (ditflow_fast.families.ltx.memory) against torch's measured memory timeline of a guided
iteration on LTX-shaped tiny transformers (CPU), and its numbers for the public preset."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from _memory_timeline import guided_iteration_peak  # noqa: E402

from ditflow_fast.families.ltx import LTXFamily  # noqa: E402
from ditflow_fast.families.ltx.memory import estimate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
GiB = 2**30


def tiny_entry(heads: int, hd: int, text: int = 24, caption: int = 32, layers: int = 5, z: int = 8) -> dict:
    d = heads * hd
    tr = dict(in_channels=z, out_channels=z, patch_size=1, patch_size_t=1, num_attention_heads=heads,
              attention_head_dim=hd, cross_attention_dim=d, num_layers=layers, caption_channels=caption)
    vae = dict(latent_channels=z, block_out_channels=[8, 8, 8, 8], layers_per_block=[1, 1, 1, 1, 1],
               spatio_temporal_scaling=[True, True, True, False], patch_size=4, patch_size_t=1)
    return dict(transformer=tr, vae=vae, text_len=text)


def measured(tmp_path, entry, grid, *, block, checkpointing, dtype, opt_mode="latent") -> int:
    """Peak minus start of one steady-state guided iteration: the forward truncated after ``block`` with q/k
    captured, a dense gradient into q and k (what the AMF loss gives), backward."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    tr = LTXVideoTransformer3DModel(**entry["transformer"]).eval().requires_grad_(False).to(dtype)
    if checkpointing:
        tr.enable_gradient_checkpointing()
    LTXFamily.install(tr)
    f, h, w = grid
    cfg = entry["transformer"]
    x = torch.randn(1, cfg["in_channels"], f, h, w, requires_grad=opt_mode == "latent")
    e = torch.randn(1, entry["text_len"], cfg["caption_channels"], dtype=dtype)
    weights = torch.randn(2, 1, cfg["num_attention_heads"], f * h * w, cfg["attention_head_dim"], dtype=dtype)
    emb = LTXFamily.initial_emb(tr, x).requires_grad_(True) if opt_mode == "emb" else None
    return guided_iteration_peak(tmp_path, LTXFamily, tr, x, e, 500.0, emb, block=block, weights=weights, dtype=dtype)


def predicted(entry, grid, *, block, checkpointing, b, opt_mode="latent") -> int:
    """The model's activations for the measured iteration: the total less what the measurement does not allocate
    (weights, the AMF, which it replaces by a dense gradient, the text input, and the optimised tensor's Adam
    moments and copy: only its gradient is new in an iteration)."""
    f, h, w = grid
    cfg = entry["transformer"]
    est = estimate(entry, frames=(f - 1) * 8 + 1, height=h * 32, width=w * 32, guidance_block=block, bytes_per_elem=b,
                   checkpointing=checkpointing, offload="model", opt_mode=opt_mode)
    c = est.components
    return (est.total - c["transformer weights"] - c["VAE weights"] - c["AMF working set"]
            - entry["text_len"] * cfg["caption_channels"] * b - c["optimised tensor + Adam (fp32)"] * 3 // 4)


# Not the shape the constants were measured on (4 heads x 64, 3 frames of 10 x 14, 16 text tokens): 8 heads x 32,
# 2 latent frames of 12 x 16, 24 text tokens of 48 channels, guidance block 3.
OTHER, OTHER_GRID = tiny_entry(8, 32, text=24, caption=48), (2, 12, 16)


@pytest.mark.parametrize("checkpointing,dtype,opt_mode", [
    (True, torch.bfloat16, "latent"),
    (False, torch.bfloat16, "latent"),
    (True, torch.float32, "latent"),
    (True, torch.bfloat16, "emb"),
    (False, torch.float32, "emb"),
])
def test_activation_constants_match_measured_peak(tmp_path, checkpointing, dtype, opt_mode):
    got = measured(tmp_path, OTHER, OTHER_GRID, block=3, checkpointing=checkpointing, dtype=dtype, opt_mode=opt_mode)
    b = 2 if dtype == torch.bfloat16 else 4
    want = predicted(OTHER, OTHER_GRID, block=3, checkpointing=checkpointing, b=b, opt_mode=opt_mode)
    print(f"ckpt={checkpointing} {dtype} {opt_mode}: measured {got / 2**20:.2f} MiB, predicted {want / 2**20:.2f} MiB")
    assert abs(want - got) / got < 0.10, (want, got)
