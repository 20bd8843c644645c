"""The Triton kernels on the CPU through Triton's interpreter, against the float64 reference.

Triton decides between interpreting and compiling when it is imported (its standard library,
``tl.max``, ``tl.sum``..., is wrapped then), so ``TRITON_INTERPRET=1`` must be set before the
first ``import triton`` of the process. On a machine without CUDA this module sets it when it
is the first to import triton (the package itself never imports triton before a kernel
launches). Otherwise (triton imported earlier, or a CUDA machine, where the variable would
leak into the rest of the suite) the tests here skip and one test reruns this file in a fresh
interpreter process, so the file checks the kernels under any test order or pytest command.

Shapes are small and tiles large (32 x 32): the interpreter pays per program and per K-step.
Shapes are chosen against the 32-wide tiles: ``h*w`` of 35 and 33 (ragged, two tiles), 15 (one
partial tile), ``F = 1``, odd text prefixes, batch 1 and 3.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# Not on a CUDA machine: there the variable would also turn the rest of the suite's GPU runs into
# interpreter runs, so the tests below go to the fresh process instead.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, make_qk, rel_err  # noqa: E402

from ditflow_fast._problem import validate  # noqa: E402
from ditflow_fast.backends import triton_launch as tb  # noqa: E402
from ditflow_fast.backends.reference import amf_reference  # noqa: E402

# True when triton's own library was wrapped for the interpreter at import.
INTERPRETED = type(triton.language.max).__name__ == "InterpretedFunction"
NOT_INTERPRETED = ("triton was imported before this module without TRITON_INTERPRET=1; "
                   "test_in_fresh_interpreter_process runs these tests")


@pytest.mark.skipif(INTERPRETED, reason="this process already interprets; the tests below run here")
def test_in_fresh_interpreter_process():
    env = dict(os.environ, TRITON_INTERPRET="1", DITFLOW_FAST_INTERP_RERUN="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    # Only this wrapper and the compile check may skip there; every kernel test must have run.
    summary = run.stdout.strip().splitlines()[-1]
    assert "2 skipped" in summary and int(summary.split(" passed")[0].split()[-1]) >= 20, summary


@pytest.mark.skipif(os.environ.get("DITFLOW_FAST_INTERP_RERUN") == "1", reason="the outer process ran it")
def test_kernels_compile_for_h100_and_4090():
    """Every kernel compiles to a cubin for sm_90 and sm_89 with its default (first) autotune
    config: loads pipelined, no register spills, shared memory within the target's limit.
    Runs in a process without TRITON_INTERPRET (see kernels/compile_check.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "ditflow_fast.kernels.compile_check", "--arch", "90,89"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("sm_")]
    assert len(lines) == 10, run.stdout
    for ln in lines:
        assert "spill 0" in ln and "pipelined True" in ln and "fits True" in ln, ln


@pytest.fixture(autouse=True)
def interpreter(request, monkeypatch):
    if request.node.name not in ("test_in_fresh_interpreter_process", test_kernels_compile_for_h100_and_4090.__name__):
        if not INTERPRETED:
            pytest.skip(NOT_INTERPRETED)
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def poisoned(monkeypatch):
    """Every output buffer the launchers allocate starts as NaN: an unwritten element shows."""

    def alloc(*shape, device, dtype=torch.float32):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(tb, "_alloc", alloc)


# (batch, heads, frames, height, width, head_dim, text_tokens, layout)
SHAPES = [
    (1, 2, 1, 5, 7, 16, 0, "contiguous"),  # F = 1, h*w = 35: a full and a 3-row tile
    (3, 2, 2, 3, 11, 16, 5, "transposed"),  # prime h*w = 33, batch 3, odd prefix, [B, T, H, d] buffer
    (2, 3, 3, 5, 3, 24, 227, "strided"),  # h*w = 15 < one tile, d = 24 (masked K), odd CogVideoX-size prefix
]


def _problem(q, k, shape, mode, temperature=2.0):
    _, _, f, h, w, _, text, _ = shape
    return validate(q, k, frames=f, height=h, width=w, temperature=temperature, mode=mode, text_tokens=text)


def _inputs(shape, dtype=torch.float32, seed=0, scale=1.0):
    b, heads, f, h, w, d, text, layout = shape
    return make_qk(b, heads, f, h, w, d, text_tokens=text, dtype=dtype, layout=layout, seed=seed, scale=scale)


def _reference(q, k, shape, mode, temperature=2.0):
    _, _, f, h, w, _, text, _ = shape
    return amf_reference(q, k, frames=f, height=h, width=w, temperature=temperature, mode=mode, text_tokens=text)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"F{s[2]}-{s[3]}x{s[4]}-t{s[6]}-{s[7]}")
def test_soft_forward_agrees(shape, poisoned):
    # scale 3 makes the softmax peaked enough that coordinates matter, not a flat average
    q, k = _inputs(shape, seed=1, scale=3.0)
    out, lse = tb.forward(_problem(q, k, shape, "soft", temperature=2.0))
    ref = _reference(q, k, shape, "soft")
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert not out.isnan().any() and not lse.isnan().any()
    assert rel_err(out, ref) < SOFT_RTOL[torch.float32]
    # the stored log-sum-exp is the one of z = tau * S per (query, target frame)
    b, heads, f, h, w, d, text, _ = shape
    s = torch.einsum("bhmd,bhnd->bmn", q[:, :, text:].double(), k[:, :, text:].double()) / (heads * math.sqrt(d))
    want = torch.logsumexp(2.0 * s.reshape(b, f * h * w, f, h * w), dim=-1)
    assert rel_err(lse, want) < 1e-6


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"F{s[2]}-{s[3]}x{s[4]}-t{s[6]}-{s[7]}")
def test_argmax_forward_agrees(shape, poisoned):
    q, k = _inputs(shape, seed=2)
    out, lse = tb.forward(_problem(q, k, shape, "argmax"))
    assert lse is None and not out.isnan().any()
    _, _, f, h, w, _, text, _ = shape
    assert_argmax_agrees(out, q, k, f, h, w, text)


@pytest.mark.parametrize("seed", [101, 202])
def test_seeded_random_shapes(seed):
    """Shapes drawn from a seeded generator, both modes, the layout drawn too."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    layout = ("contiguous", "transposed", "strided")[draw(0, 2)]
    shape = (draw(1, 2), draw(1, 3), draw(1, 3), draw(1, 6), draw(2, 9), 16 * draw(1, 2), draw(0, 9), layout)
    q, k = _inputs(shape, seed=seed, scale=3.0)
    out, _ = tb.forward(_problem(q, k, shape, "soft"))
    assert rel_err(out, _reference(q, k, shape, "soft")) < SOFT_RTOL[torch.float32], shape
    out, _ = tb.forward(_problem(q, k, shape, "argmax"))
    _, _, f, h, w, _, text, _ = shape
    assert_argmax_agrees(out, q, k, f, h, w, text)


def test_argmax_ties_lowest_index_across_tiles():
    """Equal maxima in two key tiles of a frame (columns 4 and 36 of 40): the lower index wins."""
    b, heads, f, h, w, d = 1, 1, 2, 5, 8, 16
    hw = h * w
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(b, heads, f * hw, d, generator=gen)
    k = torch.randn(b, heads, f * hw, d, generator=gen) * 0.1
    k[:, :, hw + 36] = k[:, :, hw + 4] = q[:, :, 0] * 10  # frame 1, tiles 0 and 1 of 32
    k[:, :, 36] = k[:, :, 4] = q[:, :, 0] * 10  # frame 0 as well
    out, _ = tb.forward(validate(q, k, frames=f, height=h, width=w, temperature=2.0, mode="argmax", text_tokens=0))
    ref = amf_reference(q, k, frames=f, height=h, width=w, mode="argmax")
    assert torch.equal(out[0, 0, :, 0], ref[0, 0, :, 0].float())
    assert out[0, 0, 1, 0].tolist() == [4.0, 0.0]  # key 4 is (x=4, y=0); query 0 is (0, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_forward(dtype):
    shape = SHAPES[1]
    q, k = _inputs(shape, dtype=dtype, seed=4, scale=3.0)
    out, _ = tb.forward(_problem(q, k, shape, "soft"))
    assert rel_err(out, _reference(q, k, shape, "soft")) < SOFT_RTOL[dtype]
    out, _ = tb.forward(_problem(q, k, shape, "argmax"))
    _, _, f, h, w, _, text, _ = shape
    assert_argmax_agrees(out, q, k, f, h, w, text)


def _reference_grads(q, k, shape, g):
    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    ref = _reference(qd, kd, shape, "soft")
    return torch.autograd.grad(ref, (qd, kd), g.double())


@pytest.mark.parametrize("budget", [1 << 30, 1], ids=["one-chunk", "chunk-per-frame"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: f"F{s[2]}-{s[3]}x{s[4]}-t{s[6]}-{s[7]}")
def test_backward_agrees(shape, budget, poisoned):
    q, k = _inputs(shape, seed=5, scale=3.0)
    p = _problem(q, k, shape, "soft")
    out, lse = tb.forward(p)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    dq, dk = tb.backward(p, out, lse, g, budget_bytes=budget)
    rq, rk = _reference_grads(q, k, shape, g)
    text = shape[6]
    assert dq.shape == q.shape and dk.shape == k.shape
    assert rel_err(dq, rq) < SOFT_RTOL[torch.float32] and rel_err(dk, rk) < SOFT_RTOL[torch.float32]
    assert not dq[:, :, :text].any() and not dk[:, :, :text].any()  # text tokens take no gradient


@pytest.mark.parametrize("ws_dtype", [torch.float16, torch.bfloat16])
def test_backward_half_workspace_range_scale(ws_dtype):
    """The GPU's half-precision workspace path, with a loss-sized (1e-6) upstream gradient that
    would sink into fp16's subnormals without the range scale, and a non-contiguous gradient."""
    shape = SHAPES[1]
    q, k = _inputs(shape, seed=7, scale=3.0)
    p = _problem(q, k, shape, "soft")
    out, lse = tb.forward(p)
    g = (torch.randn(out.shape[::-1], generator=torch.Generator().manual_seed(8)) * 1e-6).permute(4, 3, 2, 1, 0)
    dq, dk = tb.backward(p, out, lse, g, workspace_dtype=ws_dtype)
    rq, rk = _reference_grads(q, k, shape, g)
    assert rel_err(dq, rq) < 1e-2 and rel_err(dk, rk) < 1e-2


def test_backward_one_side_and_deterministic():
    shape = SHAPES[2]
    q, k = _inputs(shape, seed=9, scale=3.0)
    p = _problem(q, k, shape, "soft")
    out, lse = tb.forward(p)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(10))
    dq, dk = tb.backward(p, out, lse, g, budget_bytes=1)
    dq_only, none_k = tb.backward(p, out, lse, g, want_k=False, budget_bytes=1)
    none_q, dk_again = tb.backward(p, out, lse, g, want_q=False, budget_bytes=1)
    assert none_k is None and none_q is None
    assert torch.equal(dq, dq_only) and torch.equal(dk, dk_again)  # same order of sums every run


def test_autograd_function_matches_reference():
    shape = SHAPES[0]
    q, k = _inputs(shape, seed=11, scale=3.0)
    q.requires_grad_()
    k.requires_grad_()
    out = tb.amf_triton(_problem(q, k, shape, "soft"))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(12))
    out.backward(g)
    rq, rk = _reference_grads(q, k, shape, g)
    assert rel_err(q.grad, rq) < SOFT_RTOL[torch.float32] and rel_err(k.grad, rk) < SOFT_RTOL[torch.float32]


def test_forward_and_backward_share_one_score_tile(monkeypatch):
    """The backward recomputes the forward's logits, so both kernels must call the one score_tile
    rather than hold a copy of the loop: a kernel that inlines its own dot, or names another
    function, fails here, as does a wrapper that left a kernel calling the plain helper."""
    from triton.runtime.interpreter import InterpretedFunction

    from ditflow_fast.kernels import _jit, _scores, amf_bwd, amf_fwd

    for fn in (amf_fwd.amf_fwd_kernel, amf_bwd.amf_dz_kernel):
        calls = [n.func for n in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))) if isinstance(n, ast.Call)]
        names = [c.id for c in calls if isinstance(c, ast.Name) and fn.__globals__.get(c.id) is _scores.score_tile]
        assert names == ["score_tile"], fn.__name__
        assert not [c for c in calls if isinstance(c, ast.Attribute) and c.attr == "dot"], fn.__name__
        for interpret in (True, False):
            bound = _jit.wrap(fn, interpret=interpret).fn.__globals__["score_tile"]
            assert bound is _jit.wrap(_scores.score_tile, interpret=interpret), (fn.__name__, interpret)

    # And at run time: every call of one of this package's device functions, in a forward and a
    # backward, is a call of that one object (triton's own tl.max, tl.sum... are interpreted too).
    called = []
    real_call = InterpretedFunction.__call__

    def spy(self, *args, **kwargs):
        if self.fn.__module__.startswith(amf_fwd.__package__):
            called.append(self)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "__call__", spy)
    shape = SHAPES[0]
    q, k = _inputs(shape, seed=13, scale=3.0)
    p = _problem(q, k, shape, "soft")
    out, lse = tb.forward(p)
    n_fwd = len(called)
    tb.backward(p, out, lse, torch.ones_like(out), want_k=False)
    shared = _jit.wrap(_scores.score_tile, interpret=True)
    assert 0 < n_fwd < len(called) and all(c is shared for c in called)


def test_launchers_refuse_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    q, k = _inputs(SHAPES[0])
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        tb.forward(_problem(q, k, SHAPES[0], "soft"))


def test_backend_registered_and_explains_refusal(monkeypatch):
    import ditflow_fast
    from ditflow_fast.dispatch import backends

    b = backends()["triton"]
    assert b.devices == ("cuda",) and b.auto_rank is not None and b.auto_rank < backends()["torch"].auto_rank
    real_find_spec = tb.importlib.util.find_spec
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None if name == "triton" else real_find_spec(name))
    assert "triton is not installed" in b.unavailable()
    monkeypatch.undo()
    q, k = _inputs(SHAPES[0])
    _, _, f, h, w, _, text, _ = SHAPES[0]
    choice = ditflow_fast.choose_backend(q, k, frames=f, height=h, width=w, text_tokens=text)
    if not torch.cuda.is_available():
        assert choice.name != "triton" and any("cuda" in r.lower() for r in choice.skipped["triton"])
        with pytest.raises(ValueError, match="triton"):
            ditflow_fast.compute_amf(q, k, frames=f, height=h, width=w, text_tokens=text, backend="triton")
