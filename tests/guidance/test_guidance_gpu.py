"""Guidance on a CUDA device: the tiny loop in bf16, and the memory model against the allocator."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast import amf_loss, compute_amf  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.families.cogvideox.attention import install
from ditflow_fast.families.cogvideox.memory import estimate  # noqa: E402
from ditflow_fast.families.cogvideox.positions import rotary_embedding
from ditflow_fast.guidance import run_until  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.loop import Guide  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_tiny_guided_loop_on_cuda_bf16():
    tr = tiny.tiny_transformer(True).to("cuda", torch.bfloat16)
    pe = tiny.tiny_prompt_embeds()
    cfg = GuidanceConfig(model="tiny", steps=4, guided_steps=2, opt_iters=2, height=48, width=64, frames=9,
                         opt_mode="emb").resolve(tr, device="cuda")
    g = Guide(tr, tiny.tiny_scheduler(True), ref_latent=torch.randn(1, 3, 4, 6, 8), prompt_embeds=pe["prompt"],
              negative_embeds=pe["negative"], config=cfg)
    res = g.run(progress=False)
    assert res.latents.is_cuda and torch.isfinite(res.latents.float()).all()


@pytest.mark.parametrize("checkpointing", [True, False])
def test_memory_model_against_cuda_allocator(checkpointing):
    from diffusers import CogVideoXTransformer3DModel

    heads, frames, hh, ww, block = 16, 4, 30, 45, 4
    cfg = dict(num_attention_heads=heads, attention_head_dim=64, in_channels=16, out_channels=16,
               time_embed_dim=512, text_embed_dim=4096, num_layers=block + 2, sample_width=90, sample_height=60,
               sample_frames=49, patch_size=2, max_text_seq_length=226, use_rotary_positional_embeddings=True)
    tr = CogVideoXTransformer3DModel(**cfg).to("cuda", torch.bfloat16).requires_grad_(False)
    if checkpointing:
        tr.enable_gradient_checkpointing()
    install(tr)
    x = torch.randn(1, frames, 16, hh * 2, ww * 2, device="cuda", requires_grad=True)
    e = torch.randn(1, 226, 4096, device="cuda", dtype=torch.bfloat16)
    cos, sin = rotary_embedding(tr, frames, hh * 2, ww * 2, device="cuda")
    rope = (cos.bfloat16(), sin.bfloat16())
    ref = torch.ones(1, frames, frames, hh * ww, 2, device="cuda")

    def iteration():
        ctrl = run_until(tr, hidden_states=x.bfloat16(), encoder_hidden_states=e,
                         timestep=torch.tensor([500], device="cuda"), image_rotary_emb=rope, stop_after=block,
                         qk_blocks=[block])
        q, k = ctrl.qk.pop(block)
        amf_loss(compute_amf(q, k, frames=frames, height=hh, width=ww), ref).backward()
        x.grad = None

    iteration()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    iteration()
    measured = torch.cuda.max_memory_allocated() - base
    est = estimate(cfg, frames=(frames - 1) * 4 + 1, height=hh * 16, width=ww * 16, guidance_block=block,
                   checkpointing=checkpointing, vae_offload=True)
    predicted = est.total - est.components["transformer weights"]
    print(f"checkpointing={checkpointing}: measured {measured / 2**20:.1f} MiB, predicted {predicted / 2**20:.1f} MiB")
    assert abs(predicted - measured) / measured < 0.3, (predicted, measured)
