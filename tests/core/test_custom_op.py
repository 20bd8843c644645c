"""``torch.ops.ditflow_fast.amf``: agreement, gradients, opcheck and ``torch.compile(fullgraph=True)`` on CPU."""

from __future__ import annotations

import pytest
import torch
from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, make_qk, rel_err

from ditflow_fast import compute_amf, ops
from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.loss import amf_loss

# batch, heads, frames, height, width, head_dim, text_tokens: prime h*w, odd prefix, batch 3
SHAPE = dict(batch=3, heads=2, frames=2, height=3, width=5, head_dim=8, text_tokens=3)
GEOM = dict(frames=2, height=3, width=5, text_tokens=3)


def _qk(seed=0, layout="transposed", **over):
    s = dict(SHAPE, **over)
    return make_qk(s["batch"], s["heads"], s["frames"], s["height"], s["width"], s["head_dim"],
                   text_tokens=s["text_tokens"], layout=layout, seed=seed, scale=3.0)


@pytest.mark.parametrize("mode", ["soft", "argmax"])
def test_op_matches_compute_amf(mode):
    q, k = _qk(seed=1)
    out = ops.amf(q, k, mode=mode, **GEOM)
    assert torch.equal(out, compute_amf(q, k, mode=mode, **GEOM))  # the same "auto" dispatch inside
    if mode == "soft":
        assert rel_err(out, amf_reference(q, k, **GEOM)) < SOFT_RTOL[torch.float32]
    else:
        assert_argmax_agrees(out, q, k, GEOM["frames"], GEOM["height"], GEOM["width"], GEOM["text_tokens"])
    # [H, T, d] input gives [F, F, h*w, 2], as compute_amf does
    assert torch.equal(ops.amf(q[1], k[1], mode=mode, **GEOM), out[1])


def test_op_gradients_match_reference():
    q, k = _qk(seed=2)
    q.requires_grad_()
    k.requires_grad_()
    out = ops.amf(q, k, temperature=2, **GEOM)  # an int temperature is accepted, as compute_amf does
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(g)
    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    rq, rk = torch.autograd.grad(amf_reference(qd, kd, temperature=2.0, **GEOM), (qd, kd), g.double())
    assert rel_err(q.grad, rq) < SOFT_RTOL[torch.float32] and rel_err(k.grad, rk) < SOFT_RTOL[torch.float32]


def test_op_argmax_has_zero_gradient():
    q, k = _qk(seed=4)
    q.requires_grad_()
    ops.amf(q, k, mode="argmax", **GEOM).sum().backward()
    assert q.grad is None or not q.grad.any()


def test_op_errors_name_the_argument():
    q, k = _qk(seed=5)
    with pytest.raises(ValueError, match="frames"):
        ops.amf(q, k, frames=3, height=3, width=5, text_tokens=3)
    with pytest.raises(ValueError, match="mode"):
        ops.amf(q, k, mode="hard", **GEOM)


@pytest.mark.parametrize("mode", ["soft", "argmax"])
def test_opcheck_forward(mode):
    q, k = _qk(seed=6, batch=1)
    q.requires_grad_(mode == "soft")
    k.requires_grad_(mode == "soft")
    args = (q, k, GEOM["frames"], GEOM["height"], GEOM["width"], 2.0, mode, GEOM["text_tokens"], "torch")
    torch.library.opcheck(torch.ops.ditflow_fast.amf.default, args)


def test_opcheck_backward():
    q, k = _qk(seed=7, batch=1)
    g = torch.randn(1, 2, 2, 15, 2, generator=torch.Generator().manual_seed(8))
    args = (g, q, k, GEOM["frames"], GEOM["height"], GEOM["width"], 2.0, GEOM["text_tokens"], "torch")
    torch.library.opcheck(torch.ops.ditflow_fast.amf_backward.default, args)


@pytest.mark.slow  # ~35 s cold (inductor compiles C++), ~13 s warm; CI runs it anyway
def test_compiles_fullgraph_with_backward():
    """A guidance-style step (soft AMF of the generation, argmax AMF of a reference, the loss,
    its gradient) compiles as one graph and matches eager."""
    q, k = _qk(seed=9, batch=1)
    qr, kr = _qk(seed=10, batch=1)

    def step(q, k, qr, kr):
        ref = ops.amf(qr, kr, mode="argmax", **GEOM)
        gen = ops.amf(q * 1.0, k, **GEOM)
        return amf_loss(gen, ref)

    compiled = torch.compile(step, fullgraph=True)  # inductor: the op stays an opaque call in its graph
    qe, qc = q.clone().requires_grad_(), q.clone().requires_grad_()
    loss_e = step(qe, k, qr, kr)
    loss_c = compiled(qc, k, qr, kr)
    loss_e.backward()
    loss_c.backward()
    assert torch.allclose(loss_c, loss_e, rtol=1e-6, atol=0)
    assert qc.grad is not None and rel_err(qc.grad, qe.grad) < 1e-6
