"""Capture/injection processor and truncated forward on tiny CogVideoX transformers (CPU)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast import amf_loss, compute_amf  # noqa: E402
from ditflow_fast.families.cogvideox import attention as processor  # noqa: E402
from ditflow_fast.families.cogvideox import (
    positions,  # noqa: E402
    tiny,  # noqa: E402
)
from ditflow_fast.guidance import forward  # noqa: E402

F_LAT, H_LAT, W_LAT = 3, 6, 8  # 3 latent frames of 3 x 4 patches


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, F_LAT, 4, H_LAT, W_LAT, generator=g)
    e = torch.randn(batch, tiny.TEXT_LEN, tiny.TEXT_DIM, generator=g)
    return x, e, torch.full((batch,), 500)


def test_separate_query_key_rope_equal_to_shared_when_equal():
    tr = tiny.tiny_transformer(True)
    x, e, t = _inputs()
    r = positions.rotary_embedding(tr, F_LAT, H_LAT, W_LAT)
    processor.install(tr)
    with torch.no_grad():
        shared = tr(x, e, t, image_rotary_emb=r, return_dict=False)[0]
        split = tr(x, e, t, image_rotary_emb=(r, r), return_dict=False)[0]
        other = tr(x, e, t, image_rotary_emb=(r, (r[0].flip(0), r[1].flip(0))), return_dict=False)[0]
    assert torch.equal(shared, split)
    assert not torch.allclose(shared, other, atol=1e-4)


def _direct_qk(tr, block, x, e, t, rope):
    """q/k of ``block`` recomputed from the attention's inputs, outside the processor."""
    seen = {}

    def pre(module, args, kwargs):
        seen["hs"], seen["enc"] = kwargs["hidden_states"], kwargs["encoder_hidden_states"]

    h = tr.transformer_blocks[block].attn1.register_forward_pre_hook(pre, with_kwargs=True)
    with torch.no_grad():
        tr(x, e, t, image_rotary_emb=rope, return_dict=False)
    h.remove()
    attn = tr.transformer_blocks[block].attn1
    L = seen["enc"].shape[1]
    z = torch.cat([seen["enc"], seen["hs"]], 1)[-1:]
    q, k = attn.to_q(z), attn.to_k(z)
    q = attn.norm_q(q.view(1, -1, attn.heads, 16).transpose(1, 2))[:, :, L:]
    k = attn.norm_k(k.view(1, -1, attn.heads, 16).transpose(1, 2))[:, :, L:]
    if rope is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        q, k = apply_rotary_emb(q, rope), apply_rotary_emb(k, rope)
    return q, k


@pytest.mark.parametrize("rope", [True, False])
def test_captured_qk_equal_direct_computation_and_amf(rope):
    tr = tiny.tiny_transformer(rope)
    x, e, t = _inputs(batch=2)
    r = positions.rotary_embedding(tr, F_LAT, H_LAT, W_LAT)
    processor.install(tr)
    with torch.no_grad():
        ctrl = forward.run_until(tr, hidden_states=x, encoder_hidden_states=e, timestep=t, image_rotary_emb=r,
                                 stop_after=1, qk_blocks=[1])
    q, k = ctrl.qk[1]
    assert q.shape == (1, 2, F_LAT * 12, 16)
    dq, dk = _direct_qk(tr, 1, x, e, t, r)
    torch.testing.assert_close(q, dq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(k, dk, rtol=1e-5, atol=1e-6)
    for mode in ("soft", "argmax"):
        got = compute_amf(q, k, frames=F_LAT, height=3, width=4, mode=mode)
        want = compute_amf(dq, dk, frames=F_LAT, height=3, width=4, mode=mode, backend="reference")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _flow_loss_and_grad(tr, x0, e, t, r, ref, stop):
    x = x0.clone().requires_grad_(True)
    ran = []
    hook = tr.norm_final.register_forward_hook(lambda *a: ran.append(1))
    ctrl = forward.run_until(tr, hidden_states=x, encoder_hidden_states=e, timestep=t, image_rotary_emb=r,
                             stop_after=stop, qk_blocks=[1])
    hook.remove()
    q, k = ctrl.qk.pop(1)
    loss = amf_loss(compute_amf(q, k, frames=F_LAT, height=3, width=4), ref)
    loss.backward()
    return loss.detach(), x.grad, bool(ran)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("rope", [True, False])
def test_truncated_forward_matches_full_forward(checkpointing, rope):
    tr = tiny.tiny_transformer(rope, layers=4)
    if checkpointing:
        tr.enable_gradient_checkpointing()
    x, e, t = _inputs(batch=1, seed=3)
    r = positions.rotary_embedding(tr, F_LAT, H_LAT, W_LAT)
    processor.install(tr)
    ref = torch.randn(1, F_LAT, F_LAT, 12, 2)
    full = _flow_loss_and_grad(tr, x, e, t, r, ref, stop=None)
    cut = _flow_loss_and_grad(tr, x, e, t, r, ref, stop=1)
    assert full[2] and not cut[2], "truncation must skip the output layers"
    assert torch.equal(full[0], cut[0])
    assert full[1].abs().sum() > 0
    torch.testing.assert_close(cut[1], full[1], rtol=1e-5, atol=1e-7)
    again = _flow_loss_and_grad(tr, x, e, t, r, ref, stop=1)  # state left clean for the next iteration
    assert torch.equal(again[1], cut[1])


def test_position_override_is_exact_at_base_and_differentiable():
    tr = tiny.tiny_transformer(False)
    x, e, t = _inputs(batch=1)
    base = positions.base_position_table(tr, F_LAT, H_LAT, W_LAT)
    table = base.clone().requires_grad_(True)
    with torch.no_grad():
        plain = tr(x, e, t, return_dict=False)[0]
    with positions.position_override(tr, table, base):
        out = tr(x, e, t, return_dict=False)[0]
    assert torch.equal(out.detach(), plain)
    out.square().mean().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="position table"):
        with positions.position_override(tr, table[:-1], base):
            pass


def test_run_until_rejects_bad_blocks():
    tr = tiny.tiny_transformer(True)
    processor.install(tr)
    x, e, t = _inputs(batch=1)
    with pytest.raises(ValueError, match="out of range"):
        forward.run_until(tr, hidden_states=x, encoder_hidden_states=e, timestep=t, stop_after=7, qk_blocks=[7])
    with pytest.raises(ValueError, match="comes before"):
        forward.run_until(tr, hidden_states=x, encoder_hidden_states=e, timestep=t, stop_after=0, qk_blocks=[2])
