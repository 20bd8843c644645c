"""The soft forward keeping its raw scores for the backward (``amf_forward_scores``), under a budget.

With the scores kept the backward skips its recompute GEMM; the gradients must be the same as
with the recompute (both checked against the float64 reference), the kept scores must survive a
second backward, and the budget must decide which path runs.
"""

import pytest
import torch
from _amf_helpers import make_qk, rel_err

from ditflow_fast import _native
from ditflow_fast._problem import validate
from ditflow_fast.backends.cpu import amf_cpu, keep_scores_budget
from ditflow_fast.backends.reference import amf_reference

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")

SHAPE = dict(frames=3, height=4, width=5, text_tokens=6)


def _grads(q, k, g, fn):
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    return torch.autograd.grad((fn(q, k) * g).sum(), (q, k))


def _cpu(q, k):
    return amf_cpu(validate(q, k, temperature=2.0, mode="soft", **SHAPE))


def _saved_square_tensors(q, k):
    """How many [B, N, N] tensors autograd saves for the backward of one soft forward."""
    n = SHAPE["frames"] * SHAPE["height"] * SHAPE["width"]
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _cpu(q.detach().requires_grad_(), k.detach().requires_grad_())
    return sum(s == (q.shape[0], n, n) for s in shapes)


@pytest.mark.parametrize("budget_mb", ["64", "0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_with_and_without_kept_scores_match_reference(budget_mb, dtype, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", budget_mb)
    monkeypatch.setenv("DITFLOW_FAST_CPU_BWD_ROWS", "7")  # ragged backward row chunks over the kept scores
    q, k = make_qk(2, 3, 3, 4, 5, 8, 6, dtype=dtype, layout="transposed", seed=61, scale=2.0)
    assert _saved_square_tensors(q, k) == (1 if budget_mb == "64" else 0)
    g = torch.randn(2, 3, 3, 20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dq, dk = _grads(q, k, g.to(dtype), _cpu)
    rq, rk = _grads(q.double(), k.double(), g,
                    lambda a, b: amf_reference(a, b, temperature=2.0, mode="soft", **SHAPE))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(dq, rq) < tol and rel_err(dk, rk) < tol


def test_kept_scores_survive_a_second_backward(monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", "64")
    q, k = make_qk(1, 2, 3, 4, 5, 8, 6, seed=62)
    q, k = q.requires_grad_(), k.requires_grad_()
    out = _cpu(q, k)
    first = torch.autograd.grad(out.square().sum(), (q, k), retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), (q, k))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_the_budget_decides(monkeypatch):
    q, k = make_qk(2, 2, 3, 4, 5, 8, 6, seed=63)  # B * N^2 * 4 bytes = 28,800
    monkeypatch.setenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", str(28_800 / 2**20))
    assert _saved_square_tensors(q, k) == 1
    monkeypatch.setenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", str(28_799 / 2**20))
    assert _saved_square_tensors(q, k) == 0
    with torch.no_grad():  # nothing to keep scores for
        monkeypatch.setenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", "64")
        assert _saved_square_tensors(q, k) == 0


@pytest.mark.parametrize("value", ["lots", "nan", "-1", "inf"])
def test_a_bad_budget_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", value)
    with pytest.raises(ValueError, match="DITFLOW_FAST_CPU_KEEP_SCORES_MB"):
        keep_scores_budget()


def test_ops_schema_of_the_scores_forward():
    ops = _native.ops()
    qc, kc = torch.randn(2, 24, 16), torch.randn(2, 24, 16)
    args = (qc, kc, 2, 3, 4, 0.3)
    torch.library.opcheck(ops.amf_forward_scores, args, test_utils=("test_schema", "test_faketensor"))
    target, lse, scores = ops.amf_forward_scores(*args)
    plain_target, plain_lse = ops.amf_forward(*args, True)
    assert torch.allclose(scores, qc @ kc.transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert torch.equal(target, plain_target) and torch.equal(lse, plain_lse)
    grad = torch.randn_like(target)
    bwd = (qc, kc, target, lse, grad, 2, 3, 4, 0.3, True, True, scores)
    torch.library.opcheck(ops.amf_backward, bwd, test_utils=("test_schema", "test_faketensor"))


def test_the_default_budget_is_a_quarter_of_the_available_memory(monkeypatch):
    from ditflow_fast.backends import cpu

    monkeypatch.delenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", raising=False)
    monkeypatch.setattr(cpu, "_available_bytes", lambda: 12 << 30)
    assert keep_scores_budget() == 3 << 30  # 6 CogVideoX latent frames' 262 MB scores fit
    monkeypatch.setattr(cpu, "_available_bytes", lambda: 100 << 20)
    assert keep_scores_budget() == 64 << 20  # a crowded machine keeps the old floor
    monkeypatch.undo()
    monkeypatch.delenv("DITFLOW_FAST_CPU_KEEP_SCORES_MB", raising=False)
    assert 0 < cpu._available_bytes() and keep_scores_budget() >= 64 << 20  # read from /proc/meminfo here
