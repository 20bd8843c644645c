"""Semantics the definition fixes: tie rule, synthetic motion, the shim, the loss."""

import pytest
import torch
from _amf_helpers import make_qk, rel_err

from ditflow_fast import amf_loss, compute_amf
from ditflow_fast.backends.reference import research_procedure
from ditflow_fast.compat import compute_motion_flow


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_argmax_ties_pick_the_lowest_key_index(backend):
    # One frame of 2 x 4 patches. Keys 2 and 5 hold the same vector, the best match for every
    # query; the lowest index, patch 2 at (x=2, y=0), must win.
    heads, d, f, h, w = 2, 4, 1, 2, 4
    k = torch.randn(heads, h * w, d, generator=torch.Generator().manual_seed(0)) * 0.01
    k[:, 2] = 1.0
    k[:, 5] = 1.0
    q = torch.ones(heads, h * w, d)
    out = compute_amf(q, k, frames=f, height=h, width=w, mode="argmax", backend=backend)
    s = torch.arange(h * w)
    expected = torch.stack((2 - s % w, 0 - s // w), dim=-1).float()
    assert torch.equal(out[0, 0], expected)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("dx,dy", [(1, 0), (-1, 2), (2, -1)])
def test_translating_texture_gives_known_flow(backend, dx, dy):
    # Each patch's feature is read from a random texture that moves by (dx, dy) per frame, so the
    # content at (x, y) in frame i sits at (x + (j - i) dx, y + (j - i) dy) in frame j.
    frames, h, w, heads, d = 4, 7, 9, 4, 16
    pad = 3 * max(abs(dx), abs(dy))
    texture = torch.randn(h + 2 * pad, w + 2 * pad, heads * d, generator=torch.Generator().manual_seed(dx * 7 + dy))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    feats = torch.stack([texture[ys - f * dy + pad, xs - f * dx + pad] for f in range(frames)])  # [F, h, w, C]
    qk = feats.reshape(frames * h * w, heads, d).permute(1, 0, 2)
    out = compute_amf(qk, qk, frames=frames, height=h, width=w, mode="argmax", backend=backend)
    checked = 0
    for i in range(frames):
        for j in range(frames):
            tx, ty = xs + (j - i) * dx, ys + (j - i) * dy
            interior = ((tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)).flatten()
            expected = torch.tensor([(j - i) * dx, (j - i) * dy], dtype=torch.float32)
            assert torch.equal(out[i, j][interior], expected.expand(int(interior.sum()), 2))
            checked += int(interior.sum())
    assert checked > frames * frames * h * w // 3


def test_shim_argmax_is_identical_to_research_procedure():
    q, k = make_qk(2, 3, 3, 4, 5, 8, 226, dtype=torch.float64, seed=21)
    kw = dict(h=4, w=5, temp=5, nframes=3, argmax=True)
    ours = compute_motion_flow(q, k, **kw)
    theirs = research_procedure(q, k, **kw)
    assert ours.shape == (9, 20, 2)
    assert torch.equal(ours, theirs.to(ours.dtype))


def test_shim_soft_matches_research_procedure():
    q, k = make_qk(2, 3, 3, 4, 5, 8, 226, seed=22)
    kw = dict(h=4, w=5, temp=5, nframes=3, argmax=False)
    ours = compute_motion_flow(q, k, **kw)
    theirs = research_procedure(q.double(), k.double(), **kw)
    assert ours.dtype == torch.float32
    assert rel_err(ours, theirs) < 1e-5


def test_shim_layout_is_pair_major():
    q, k = make_qk(1, 2, 3, 2, 3, 4, 226, seed=23)
    flat = compute_motion_flow(q, k, h=2, w=3, nframes=3, temp=2)
    full = compute_amf(q[0], k[0], frames=3, height=2, width=3, text_tokens=226)
    for i in range(3):
        for j in range(3):
            assert torch.equal(flat[i * 3 + j], full[i, j])


def test_loss_masks_zero_reference_entries():
    ref = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -2.0]])
    gen = torch.tensor([[5.0, 5.0], [2.0, 0.0], [0.0, 0.0]])
    # Entries 1 and 2 count: ((1)^2 + 0 + 0 + (2)^2) / 4 components.
    assert amf_loss(gen, ref).item() == pytest.approx(5.0 / 4)
    assert amf_loss(gen, ref, threshold=False).item() == pytest.approx((25 + 25 + 1 + 4) / 6)


def test_loss_with_empty_mask_is_zero_not_nan():
    gen = torch.randn(2, 2, 5, 2, requires_grad=True)
    loss = amf_loss(gen, torch.zeros(2, 2, 5, 2))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, gen)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_loss_gradient_flows_to_generated_amf_only():
    gen = torch.randn(3, 2, requires_grad=True)
    ref = torch.randn(3, 2, requires_grad=True)
    amf_loss(gen, ref).backward()
    assert gen.grad is not None and ref.grad is None


@pytest.mark.parametrize("gen,ref,err", [
    (torch.zeros(3, 2), torch.zeros(4, 2), ValueError),
    (torch.zeros(3, 3), torch.zeros(3, 3), ValueError),
    (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2), TypeError),
])
def test_loss_bad_input(gen, ref, err):
    with pytest.raises(err):
        amf_loss(gen, ref)
