"""Hardening of the AMF entry points: autocast, non-finite and out-of-range values, arguments.

1. Inside ``torch.autocast`` every backend gives the result and the gradients it gives outside
   (fp32 accumulation; the research code runs DiTFlow under fp16/bf16 autocast).
2. Non-finite values never become a result: NaN/inf loss inputs, finite q/k/temperature whose
   float32 scores would overflow, and a backend output that is not finite are errors.
3. Arguments: ``layout=``, integer-like geometry, the research shim's errors and defaults.

The CUDA autocast counterparts are in ``tests/gpu/test_autocast_gpu.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys

import numpy as np
import pytest
import torch

# As tests/core/test_triton_kernels.py: the Triton interpreter must be chosen before triton's first
# import of the process, and only off CUDA machines (there it would leak into the GPU tests).
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, rel_err  # noqa: E402

from ditflow_fast import amf_loss, choose_backend, compute_amf  # noqa: E402
from ditflow_fast import dispatch as dispatch_mod  # noqa: E402
from ditflow_fast._problem import finite_max, in_memory_order, range_limit  # noqa: E402
from ditflow_fast.backends.reference import amf_reference, research_procedure  # noqa: E402
from ditflow_fast.compat import compute_motion_flow  # noqa: E402
from ditflow_fast.dispatch import Backend, backends  # noqa: E402
from ditflow_fast.ops import amf as amf_op  # noqa: E402


def _cpu_backends():
    out = []
    for name in ("reference", "torch", "cpu"):
        why = backends()[name].unavailable() if name in backends() else "not registered"
        out.append(pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=f"{name}: {why}")))
    return out


CPU_BACKENDS = _cpu_backends()
FAST_CPU_BACKENDS = [p for p in CPU_BACKENDS if p.values[0] != "reference"]
AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]

# The repro geometry: CogVideoX's 226 text tokens, 2 frames of 3 x 4 patches.
GEOM = dict(frames=2, height=3, width=4, text_tokens=226)
SHAPE = (1, 2, 226 + 24, 8)


def _qk(dtype=torch.float32, seed=0, scale=1.0, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen) * scale).to(dtype) for _ in range(2)]


def _soft_and_grads(q, k, backend, **geom):
    qq, kk = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    out = compute_amf(qq, kk, backend=backend, **geom)
    out.square().sum().backward()
    return out.detach(), qq.grad, kk.grad


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 1. autocast


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ac_dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_autocast_gives_the_result_and_gradients_of_no_autocast(backend, ac_dtype, in_dtype):
    q, k = _qk(in_dtype, seed=1, scale=2.0)
    want, want_dq, want_dk = _soft_and_grads(q, k, backend, **GEOM)
    want_hard = compute_amf(q, k, mode="argmax", backend=backend, **GEOM)
    with torch.autocast("cpu", dtype=ac_dtype):
        # the repro: forward and backward inside autocast (crashed in the torch backend)
        got, dq, dk = _soft_and_grads(q, k, backend, **GEOM)
        hard = compute_amf(q, k, mode="argmax", backend=backend, **GEOM)
    assert got.dtype == torch.float32 and dq.dtype == in_dtype
    _close(got, want)
    _close(dq, want_dq)
    _close(dk, want_dk)
    assert torch.equal(hard, want_hard)
    # fp32 accumulation, not the autocast dtype (the torch backend's soft error was 0.15 before)
    assert rel_err(got, amf_reference(q, k, **GEOM)) < SOFT_RTOL[in_dtype]
    assert_argmax_agrees(hard, q, k, GEOM["frames"], GEOM["height"], GEOM["width"], GEOM["text_tokens"])


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_backward_inside_autocast_of_a_forward_outside_it(backend):
    """The autograd engine runs a backward with the autocast state of the ``.backward()`` call, so
    each backend's backward turns autocast off for itself, not only the forward in ``compute_amf``."""
    q, k = _qk(seed=2, scale=2.0)
    _, want_dq, want_dk = _soft_and_grads(q, k, backend, **GEOM)
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    out = compute_amf(qq, kk, backend=backend, **GEOM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out.square().sum().backward()
    _close(qq.grad, want_dq)
    _close(kk.grad, want_dk)


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """The registered ``triton`` backend, let onto CPU tensors under Triton's interpreter."""
    triton = pytest.importorskip("triton")
    if type(triton.language.max).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported before this module without TRITON_INTERPRET=1 "
                    "(tests/core/test_triton_kernels.py covers the kernels in a fresh process)")
    if "triton" not in backends():
        pytest.skip("the triton backend is not registered")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    entry = dataclasses.replace(backends()["triton"], devices=("cpu", "cuda"), unavailable=lambda: None)
    monkeypatch.setitem(dispatch_mod._REGISTRY, "triton", entry)


@pytest.mark.parametrize("ac_dtype", AUTOCAST_DTYPES, ids=str)
def test_cpu_autocast_triton_under_the_interpreter(triton_on_cpu, ac_dtype):
    geom = dict(frames=2, height=3, width=4, text_tokens=5)
    q, k = _qk(seed=3, scale=2.0, shape=(1, 2, 29, 16))
    want, want_dq, want_dk = _soft_and_grads(q, k, "triton", **geom)
    want_hard = compute_amf(q, k, mode="argmax", backend="triton", **geom)
    with torch.autocast("cpu", dtype=ac_dtype):
        got, dq, dk = _soft_and_grads(q, k, "triton", **geom)
        hard = compute_amf(q, k, mode="argmax", backend="triton", **geom)
    _close(got, want)
    _close(dq, want_dq)
    _close(dk, want_dk)
    assert torch.equal(hard, want_hard)
    assert rel_err(got, amf_reference(q, k, **geom)) < SOFT_RTOL[torch.float32]


@pytest.fixture(params=["auto", "torch"])
def shim_backend(request, monkeypatch):
    """The backend the shim's ``backend="auto"`` takes: the first available one, or ``torch`` with
    the others made unavailable for the test."""
    if request.param == "torch":
        for name, entry in backends().items():
            if entry.auto_rank is not None and name != "torch":
                monkeypatch.setitem(dispatch_mod._REGISTRY, name,
                                    dataclasses.replace(entry, unavailable=lambda: "off for this test"))
    return request.param


@pytest.mark.parametrize("ac_dtype", AUTOCAST_DTYPES, ids=str)
def test_shim_in_the_research_call_pattern_under_autocast_with_grad_scaler(ac_dtype, shim_backend):
    """Reference AMF in argmax mode under no_grad + autocast, then the soft AMF loss backpropagated
    under autocast through a GradScaler: the unscaled gradients are the ones without autocast."""
    if shim_backend == "torch":
        assert choose_backend(*_qk(), **GEOM).name == "torch"
    kw = dict(h=3, w=4, nframes=2, temp=2)
    # q, k as the model hands them over under autocast: the autocast dtype, from fp32 leaves
    q_ref, k_ref = _qk(ac_dtype, seed=4, scale=2.0, shape=(2, 2, 250, 8))
    q32, k32 = _qk(seed=5, scale=2.0, shape=(2, 2, 250, 8))

    def run(autocast: bool):
        leaves = [t.clone().requires_grad_() for t in (q32, k32)]
        opt = torch.optim.SGD(leaves, lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=autocast)
        with torch.autocast("cpu", dtype=ac_dtype, enabled=autocast):
            with torch.no_grad():
                ref = compute_motion_flow(q_ref, k_ref, argmax=True, **kw)
            gen = compute_motion_flow(leaves[0].to(ac_dtype), leaves[1].to(ac_dtype), **kw)
            loss = amf_loss(gen, ref)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [t.grad.clone() for t in leaves]
        scaler.step(opt)
        scaler.update()
        return ref, loss.detach(), grads, leaves

    want_ref, want_loss, want_grads, _ = run(autocast=False)
    ref, loss, grads, stepped = run(autocast=True)
    assert ref.dtype == torch.float32 and torch.equal(ref, want_ref)
    assert (ref != 0).any() and loss > 0
    _close(loss, want_loss)
    for g, w in zip(grads, want_grads, strict=True):
        assert g.abs().sum() > 0
        _close(g, w)
    assert not torch.equal(stepped[0].detach(), q32)  # the scaler found no inf and took the step


# ---------------------------------------------------------------------------------------------
# 2. non-finite values never become a result


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["gen", "ref"])
def test_loss_non_finite_input_names_the_argument(which, bad):
    gen, ref = torch.randn(2, 2, 5, 2, requires_grad=True), torch.randn(2, 2, 5, 2)
    t = torch.randn(2, 2, 5, 2)
    t[1, 0, 3, 1] = bad
    args = {"gen": gen, "ref": ref, which: t}
    for threshold in (True, False):
        with pytest.raises(ValueError, match=f"^{which} contains NaN or inf"):
            amf_loss(args["gen"], args["ref"], threshold=threshold)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("view", ["bthd", "bthd_video", "strided", "expanded"])
def test_the_finiteness_check_reads_any_layout(view, bad):
    # finite_max reduces views in memory order where it can (in_memory_order); the answer must not change,
    # and a view it cannot reorder (strided, expanded) must still be read in full.
    base = torch.randn(2, 9, 3, 8)  # [B, T, H, d]
    if bad is not None:
        base[1, 7, 2, 4] = bad
    t = {"bthd": base.transpose(1, 2), "bthd_video": base[:1, 4:].transpose(1, 2),
         "strided": base.transpose(1, 2)[..., ::2], "expanded": base[:, :1].transpose(1, 2).expand(2, 3, 5, 8)}[view]
    want = t.contiguous().abs().max().item()
    if view in ("bthd", "bthd_video"):
        assert in_memory_order(t).is_contiguous()
    got = finite_max(t)
    if bad is None or view in ("bthd_video", "expanded"):  # the bad value lies outside those views
        assert got == want
    else:
        assert got != got  # NaN


def test_loss_on_empty_input_is_zero_with_and_without_threshold():
    gen, ref = torch.empty(0, 2, requires_grad=True), torch.empty(0, 2)
    plain, masked = amf_loss(gen, ref, threshold=False), amf_loss(gen, ref, threshold=True)
    assert plain.item() == 0.0 and masked.item() == 0.0
    plain.backward()
    assert gen.grad is not None and gen.grad.shape == (0, 2)


@pytest.mark.parametrize("threshold", [0, 1, 0.5, "yes", None, np.True_])
def test_loss_threshold_must_be_a_bool(threshold):
    with pytest.raises(TypeError, match="threshold must be a bool"):
        amf_loss(torch.randn(3, 2), torch.randn(3, 2), threshold=threshold)


@pytest.mark.parametrize("mode", ["soft", "argmax"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_huge_finite_inputs_are_refused_naming_q_k_and_the_limit(backend, mode):
    q, k = _qk(seed=6)
    for qq, kk in ((q * 1e19, k * 1e19), (q * 1e36, k), (q, k * 1e37)):
        with pytest.raises(ValueError, match=r"^q and k are too large for float32 scores: max\|q\| \* max\|k\| "
                                             r"\* H \* d = .* exceeds the limit 4\.25e\+37"):
            compute_amf(qq, kk, mode=mode, backend=backend, **GEOM)
    with pytest.raises(ValueError, match="q and k are too large"):  # k is q: one scan, same bound
        compute_amf(q * 1e19, q * 1e19, mode=mode, backend=backend, **GEOM)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_huge_temperature_is_refused_in_soft_mode_and_ignored_by_argmax(backend):
    q, k = _qk(seed=7)
    with pytest.raises(ValueError, match=r"^temperature=1e\+38 is too large for these q, k: .* float32 limit"):
        compute_amf(q, k, temperature=1e38, backend=backend, **GEOM)
    hard = compute_amf(q, k, temperature=1e38, mode="argmax", backend=backend, **GEOM)
    assert torch.equal(hard, amf_reference(q, k, mode="argmax", **GEOM).float())


@pytest.mark.parametrize("mode", ["soft", "argmax"])
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_large_inputs_under_the_limit_are_computed_without_overflow(backend, mode):
    q, k = _qk(seed=8)
    q, k = q * 1e17, k * 1e17  # max|q| * max|k| * H * d ~ 2e36, under the 4.25e37 limit
    out = compute_amf(q, k, mode=mode, backend=backend, **GEOM)
    assert torch.isfinite(out).all()
    # the logits are so large that the soft AMF is the argmax one: both equal the float64 oracle's
    assert torch.equal(out, amf_reference(q, k, mode=mode, **GEOM).float())


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_large_inputs_under_the_limit_have_finite_gradients(backend):
    # the soft AMF is one-hot at such logits, so its gradients are 0; what must not happen is exp of a
    # rounding residual near 1e26 (csrc/amf_reduce.h, nonpositive) turning them into inf * 0
    q, k = _qk(seed=8)
    q, k = (q * 1e17).requires_grad_(), (k * 1e17).requires_grad_()
    out = compute_amf(q, k, mode="soft", backend=backend, **GEOM)
    dq, dk = torch.autograd.grad(out, (q, k), torch.randn_like(out))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()


def test_float64_input_has_the_float64_range():
    q, k = _qk(torch.float64, seed=9)
    q, k = q * 1e19, k * 1e19  # refused in float32, fine in float64
    for mode in ("soft", "argmax"):
        out = compute_amf(q, k, mode=mode, backend="torch", **GEOM)
        assert torch.isfinite(out).all()
        assert rel_err(out, amf_reference(q, k, mode=mode, **GEOM)) < 1e-10
    assert range_limit(torch.float64) > 1e300
    with pytest.raises(ValueError, match="too large for float64 scores"):
        compute_amf(q * 1e150, k * 1e150, backend="torch", **GEOM)


@pytest.fixture
def nan_backend():
    backend = Backend(
        name="nan_test_double", summary="test double: returns NaN",
        run=lambda p: torch.full(p.out_shape(), float("nan")),
        devices=("cpu",), dtypes=(torch.float32,), auto_rank=None,
    )
    dispatch_mod.register(backend)
    yield backend.name
    dispatch_mod._REGISTRY.pop(backend.name)


def test_a_backend_that_returns_nan_is_caught(nan_backend):
    q, k = _qk(seed=10)
    with pytest.raises(RuntimeError, match="backend 'nan_test_double' produced NaN or inf"):
        compute_amf(q, k, backend=nan_backend, **GEOM)


# ---------------------------------------------------------------------------------------------
# 3. arguments


@pytest.mark.parametrize("mode", ["soft", "argmax"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_layout_bthd_equals_the_default_on_the_transpose(backend, mode):
    base = torch.randn(2, 250, 2, 8, generator=torch.Generator().manual_seed(11))  # [B, T, H, d]: Wan's layout
    kbase = torch.randn(2, 250, 2, 8, generator=torch.Generator().manual_seed(12))
    qa, ka = base.clone().requires_grad_(), kbase.clone().requires_grad_()
    qb, kb = base.clone().requires_grad_(), kbase.clone().requires_grad_()
    got = compute_amf(qa, ka, layout="bthd", mode=mode, backend=backend, **GEOM)
    want = compute_amf(qb.transpose(1, 2), kb.transpose(1, 2), mode=mode, backend=backend, **GEOM)
    assert got.shape == (2, 2, 2, 12, 2) and torch.equal(got, want)
    # 3-D: [T, H, d] against [H, T, d]
    assert torch.equal(compute_amf(base[1], kbase[1], layout="bthd", mode=mode, backend=backend, **GEOM),
                       compute_amf(base[1].transpose(0, 1), kbase[1].transpose(0, 1), mode=mode, backend=backend,
                                   **GEOM))
    if mode == "soft":
        got.square().sum().backward()
        want.square().sum().backward()
        assert qa.grad.shape == base.shape and torch.equal(qa.grad, qb.grad) and torch.equal(ka.grad, kb.grad)
    choice = choose_backend(base, kbase, layout="bthd", mode=mode, backend=backend, **GEOM)
    assert choice.name == backend


@pytest.mark.parametrize("layout", ["BHTD", "bhdt", "", None, 1])
def test_bad_layout_is_a_value_error_naming_layout(layout):
    q, k = _qk()
    with pytest.raises(ValueError, match=r"^layout must be one of \('bhtd', 'bthd'\)"):
        compute_amf(q, k, layout=layout, **GEOM)
    with pytest.raises(ValueError, match="^layout must be one of"):
        choose_backend(q, k, layout=layout, **GEOM)
    with pytest.raises(ValueError, match="^layout must be one of"):
        amf_op(q, k, layout=layout, **GEOM)


def test_layout_bthd_shape_errors_speak_of_the_bthd_layout():
    q = torch.randn(250, 8)
    with pytest.raises(ValueError, match=r"^q must be \[B, T, H, d\] or \[T, H, d\] \(layout='bthd'\)"):
        compute_amf(q, q, layout="bthd", **GEOM)


def test_layout_goes_through_the_custom_op_and_torch_compile():
    base, kbase = _qk(seed=13, shape=(1, 250, 2, 8))
    want = compute_amf(base.transpose(1, 2), kbase.transpose(1, 2), **GEOM)
    assert torch.equal(amf_op(base, kbase, layout="bthd", **GEOM), want)

    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k: compute_amf(q, k, layout="bthd", **GEOM), backend="eager", fullgraph=True)
    assert torch.equal(compiled(base, kbase), want)


INTEGER_LIKE = [np.int64(2), np.int32(2), torch.tensor(2), torch.tensor(2, dtype=torch.int32)]


@pytest.mark.parametrize("value", INTEGER_LIKE, ids=lambda v: f"{type(v).__name__}-{getattr(v, 'dtype', '')}")
@pytest.mark.parametrize("name", ["frames", "height", "width", "text_tokens"])
def test_integer_like_geometry_is_accepted(name, value):
    geom = dict(frames=2, height=3, width=4, text_tokens=5)
    geom[name] = value
    t = int(geom["text_tokens"]) + int(geom["frames"]) * int(geom["height"]) * int(geom["width"])
    q, k = _qk(seed=14, shape=(1, 2, t, 8))
    plain = {n: int(v) for n, v in geom.items()}
    assert torch.equal(compute_amf(q, k, **geom), compute_amf(q, k, **plain))
    assert torch.equal(amf_op(q, k, **geom), compute_amf(q, k, **plain))


@pytest.mark.parametrize("bad", [2.5, 2.0, "3", True, False, np.True_, torch.tensor(2.0), torch.tensor(True), None])
@pytest.mark.parametrize("name", ["frames", "height", "width", "text_tokens"])
def test_non_integer_geometry_is_a_type_error_naming_the_argument(name, bad):
    q, k = _qk()
    with pytest.raises(TypeError, match=f"^{name} must be an int"):
        compute_amf(q, k, **{**GEOM, name: bad})
    with pytest.raises(TypeError, match=f"^{name} must be an int"):
        amf_op(q, k, **{**GEOM, name: bad})


def test_shim_keeps_the_research_defaults():
    params = inspect.signature(compute_motion_flow).parameters
    assert {n: p.default for n, p in params.items() if n not in ("q", "k")} == dict(
        h=30, w=45, temp=5, nframes=6, argmax=False)


def test_shim_token_mismatch_names_nframes_h_and_w():
    q, k = _qk(shape=(2, 2, 250, 8))  # 2 frames of 3 x 4: the research default nframes=6 (30 x 45) does not fit
    with pytest.raises(ValueError, match=r"T=250 .*226 \+ 6\*30\*45 = 8326: pass nframes .* h and w"):
        compute_motion_flow(q, k)
    with pytest.raises(ValueError, match=r"226 \+ 3\*3\*4 = 262: pass nframes"):
        compute_motion_flow(q, k, h=3, w=4, nframes=3)
    assert compute_motion_flow(q, k, h=3, w=4, nframes=2).shape == (4, 12, 2)
    with pytest.raises(ValueError, match=r"^q must be \[B, H, T, d\]"):
        compute_motion_flow(q[0], k[0], h=3, w=4, nframes=2)


def test_research_procedure_argmax_returns_float_like_the_original():
    q, k = _qk(shape=(1, 2, 250, 8))
    out = research_procedure(q, k, h=3, w=4, nframes=2, argmax=True)
    assert out.dtype == torch.float32
    assert torch.equal(out, compute_motion_flow(q, k, h=3, w=4, nframes=2, argmax=True))
