"""The memory model against torch's measured memory timeline of a guided iteration (CPU)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from _memory_timeline import timeline_peak  # noqa: E402

from ditflow_fast import amf_loss, compute_amf  # noqa: E402
from ditflow_fast.backends.reference import research_bytes  # noqa: E402
from ditflow_fast.families.cogvideox.attention import install
from ditflow_fast.families.cogvideox.memory import PRESETS, estimate  # noqa: E402
from ditflow_fast.families.cogvideox.positions import rotary_embedding
from ditflow_fast.guidance import run_until  # noqa: E402

# A shape other than the one the constants were measured on: 6 heads x 64, 3 latent frames of 10 x 14.
HEADS, FRAMES, HH, WW, TEXT = 6, 3, 10, 14, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def _measured_peak(tmp_path, checkpointing: bool, block: int) -> tuple[int, dict]:
    from diffusers import CogVideoXTransformer3DModel

    cfg = dict(num_attention_heads=HEADS, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=64,
               text_embed_dim=32, num_layers=block + 2, sample_width=WW * 2, sample_height=HH * 2,
               sample_frames=(FRAMES - 1) * 4 + 1, patch_size=2, max_text_seq_length=TEXT,
               use_rotary_positional_embeddings=True)
    torch.manual_seed(0)
    tr = CogVideoXTransformer3DModel(**cfg).requires_grad_(False)
    if checkpointing:
        tr.enable_gradient_checkpointing()
    install(tr)
    x = torch.randn(1, FRAMES, 16, HH * 2, WW * 2, requires_grad=True)
    e = torch.randn(1, TEXT, 32)
    rope = rotary_embedding(tr, FRAMES, HH * 2, WW * 2)
    ref = torch.ones(1, FRAMES, FRAMES, HH * WW, 2)

    def iteration():
        ctrl = run_until(tr, hidden_states=x, encoder_hidden_states=e, timestep=torch.tensor([500]),
                         image_rotary_emb=rope, stop_after=block, qk_blocks=[block])
        q, k = ctrl.qk.pop(block)
        amf_loss(compute_amf(q, k, frames=FRAMES, height=HH, width=WW), ref).backward()
        x.grad = None

    return timeline_peak(tmp_path, iteration), cfg


@pytest.mark.parametrize("checkpointing,block", [(True, 2), (False, 2)])
def test_activation_model_matches_measured_peak(tmp_path, checkpointing, block):
    measured, cfg = _measured_peak(tmp_path, checkpointing, block)
    est = estimate(cfg, frames=(FRAMES - 1) * 4 + 1, height=HH * 16, width=WW * 16, guidance_block=block,
                   bytes_per_elem=4, checkpointing=checkpointing, vae_offload=True)
    predicted = est.total - est.components["transformer weights"]
    print(f"checkpointing={checkpointing}: measured {measured / 2**20:.2f} MiB, predicted {predicted / 2**20:.2f} MiB")
    assert abs(predicted - measured) / measured < 0.15, (predicted, measured)


def test_49_frame_5b_numbers():
    est = estimate(PRESETS["THUDM/CogVideoX-5b"], frames=49, height=480, width=720, guidance_block=20)
    assert est.research_components["AMF working set"] == research_bytes(48, 13, 30, 45, 2)
    assert est.components["AMF working set"] < 2**30
    assert est.total < 24 * 2**30 < 40 * 2**30 < est.research_total
    assert abs(est.components["transformer weights"] / 2 - 5_570_283_072) < 1  # 5.57 B parameters in bf16
