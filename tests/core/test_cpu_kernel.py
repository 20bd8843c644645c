"""The fused CPU kernel (``cpu`` backend, csrc/amf_cpu.cpp) against the float64 oracle, per docs/amf.md.

Skipped with the reason when the native extension is not built (build it with
``pip install -e . --no-build-isolation`` or ``.ci/native.sh``; see docs/native.md).
"""

import pytest
import torch
from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, make_qk, rel_err

from ditflow_fast import _native, compute_amf
from ditflow_fast._problem import validate
from ditflow_fast.backends.cpu import amf_cpu
from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.dispatch import backends

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")

# (batch, heads, frames, height, width, head_dim, text_tokens, layout). N ranges from 7 to 297 so
# that the kernel's query tiles (16+ rows) come out both whole and ragged.
SHAPES = [
    (1, 2, 1, 5, 7, 8, 0, "contiguous"),  # F = 1, a single tile
    (1, 3, 3, 1, 13, 4, 7, "transposed"),  # prime h*w, odd text prefix, h = 1
    (3, 2, 2, 3, 5, 16, 226, "strided"),  # batch 3, h != w, CogVideoX's prefix
    (2, 4, 4, 4, 3, 8, 1, "contiguous"),  # several tiles per batch element
    (1, 2, 3, 9, 11, 16, 0, "transposed"),  # N = 297: many ragged tiles
]


def _problem(q, k, shape, mode, temperature=2.0):
    _, _, f, h, w, _, text, _ = shape
    return validate(q, k, frames=f, height=h, width=w, temperature=temperature, mode=mode, text_tokens=text)


def _reference(q, k, shape, mode, temperature=2.0):
    _, _, f, h, w, _, text, _ = shape
    return amf_reference(q, k, frames=f, height=h, width=w, temperature=temperature, mode=mode, text_tokens=text)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_soft_matches_float64_reference(shape, dtype):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=SHAPES.index(shape), scale=2.0)
    out = amf_cpu(_problem(q, k, shape, "soft"))
    ref = _reference(q, k, shape, "soft")
    assert out.shape == (b, f, f, h * w, 2)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(out, ref) < SOFT_RTOL[dtype]


@pytest.mark.parametrize("temperature", [0.25, 5.0, 60.0])
def test_soft_temperatures_including_peaked_softmax(temperature):
    shape = (1, 2, 2, 4, 5, 8, 3, "contiguous")
    q, k = make_qk(1, 2, 2, 4, 5, 8, 3, seed=7, scale=3.0)
    out = amf_cpu(_problem(q, k, shape, "soft", temperature))
    assert rel_err(out, _reference(q, k, shape, "soft", temperature)) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_argmax_agrees_with_float64_scores(shape, dtype):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=50 + SHAPES.index(shape))
    out = amf_cpu(_problem(q, k, shape, "argmax"))
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_argmax_agrees(out, q, k, f, h, w, text)


def test_argmax_exact_ties_pick_the_lowest_key_index():
    # Entries in {-1, 0, 1} and a short head make every score an exact small integer in fp32, so
    # ties are exact; repeated key vectors within a frame force ties at known places.
    gen = torch.Generator().manual_seed(3)
    f, h, w, heads, d = 2, 3, 4, 2, 4
    n = f * h * w
    q = torch.randint(-1, 2, (2, heads, n, d), generator=gen).float()
    k = torch.randint(-1, 2, (2, heads, n, d), generator=gen).float()
    k[:, :, 7] = k[:, :, 2]  # frame 0: key 7 duplicates key 2
    k[:, :, 12 + 11] = k[:, :, 12 + 0]  # frame 1: last key duplicates the first
    shape = (2, heads, f, h, w, d, 0, "contiguous")
    out = amf_cpu(_problem(q, k, shape, "argmax"))
    ref = _reference(q, k, shape, "argmax")  # torch.argmax on exact float64 integers: first maximum
    assert torch.equal(out.double(), ref)


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_soft_gradients_match_reference(shape):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text, layout=layout, seed=20 + SHAPES.index(shape), scale=2.0)
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    out = amf_cpu(_problem(q, k, shape, "soft"))
    ref = _reference(q, k, shape, "soft")
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    dq, dk = torch.autograd.grad((out * g.float()).sum(), (q, k))
    rq, rk = torch.autograd.grad((ref * g).sum(), (q, k))
    assert rel_err(dq, rq) < 1e-5 and rel_err(dk, rk) < 1e-5
    if text:
        assert not dq[:, :, :text].any() and not dk[:, :, :text].any()  # text tokens get no gradient


def test_small_tiles_and_chunks_agree(monkeypatch):
    # The kernel's tuning knobs (read per call) forced small: many ragged forward tiles of one key
    # frame each, and backward row chunks that do not divide N.
    monkeypatch.setenv("DITFLOW_FAST_CPU_ROWS", "5")
    monkeypatch.setenv("DITFLOW_FAST_CPU_TILE_KB", "1")
    monkeypatch.setenv("DITFLOW_FAST_CPU_BWD_ROWS", "7")
    shape = (2, 3, 3, 4, 5, 8, 2, "strided")
    q, k = make_qk(2, 3, 3, 4, 5, 8, 2, layout="strided", seed=41, scale=2.0)
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    out = amf_cpu(_problem(q, k, shape, "soft"))
    ref = _reference(q, k, shape, "soft")
    assert rel_err(out, ref) < 1e-5
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dq, dk = torch.autograd.grad((out * g.float()).sum(), (q, k))
    rq, rk = torch.autograd.grad((ref * g).sum(), (q, k))
    assert rel_err(dq, rq) < 1e-5 and rel_err(dk, rk) < 1e-5
    assert_argmax_agrees(amf_cpu(_problem(q.detach(), k.detach(), shape, "argmax")), q.detach(), k.detach(), 3, 4, 5, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threads_taking_the_next_free_item_give_the_fixed_shares_answer(monkeypatch, dtype):
    # Many ragged items (5-row tiles, one key frame each) over 2 threads: which thread takes an item must not
    # change a bit of the answer, soft (forward and gradients) or argmax, against DITFLOW_FAST_CPU_STATIC=1.
    monkeypatch.setenv("DITFLOW_FAST_CPU_ROWS", "5")
    monkeypatch.setenv("DITFLOW_FAST_CPU_TILE_KB", "1")
    shape = (2, 3, 3, 4, 5, 8, 2, "strided")
    q0, k0 = make_qk(2, 3, 3, 4, 5, 8, 2, layout="strided", seed=43, scale=2.0)
    q0, k0 = q0.to(dtype), k0.to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = {}
        for static in ("1", "0"):
            monkeypatch.setenv("DITFLOW_FAST_CPU_STATIC", static)
            q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
            soft = amf_cpu(_problem(q, k, shape, "soft"))
            grads = torch.autograd.grad(soft.square().sum(), (q, k))
            got[static] = (soft.detach(), *grads, amf_cpu(_problem(q0, k0, shape, "argmax")))
    finally:
        torch.set_num_threads(threads)
    for fixed, free in zip(got["1"], got["0"], strict=True):
        assert torch.equal(fixed, free)
    assert rel_err(got["0"][0], _reference(q0, k0, shape, "soft")) < 1e-5


@pytest.mark.parametrize("tile_kb", ["1", "4096"])  # one key frame a GEMM, or all frames in one
def test_tiles_widened_to_a_multiple_of_8_keys_agree(monkeypatch, tile_kb):
    # 3 frames of 5 x 3 = 15 keys: each GEMM takes up to 7 neighbouring keys more (the last frame's from before
    # it), which the reduction must skip. Against the float64 reference and the unwidened tiles.
    monkeypatch.setenv("DITFLOW_FAST_CPU_ROWS", "6")
    monkeypatch.setenv("DITFLOW_FAST_CPU_TILE_KB", tile_kb)
    shape = (2, 3, 3, 5, 3, 8, 2, "contiguous")
    q, k = make_qk(2, 3, 3, 5, 3, 8, 2, seed=47, scale=2.0)
    got = {}
    for pad in ("0", "1"):
        monkeypatch.setenv("DITFLOW_FAST_CPU_PAD", pad)
        got[pad] = {mode: amf_cpu(_problem(q, k, shape, mode)) for mode in ("soft", "argmax")}
        assert rel_err(got[pad]["soft"], _reference(q, k, shape, "soft")) < 1e-5
        assert_argmax_agrees(got[pad]["argmax"], q, k, 3, 5, 3, 2)
    assert torch.allclose(got["0"]["soft"], got["1"]["soft"], rtol=0, atol=1e-5)


def test_gradient_of_q_only_and_k_only():
    shape = (1, 2, 3, 3, 4, 8, 5, "contiguous")
    q0, k0 = make_qk(1, 2, 3, 3, 4, 8, 5, seed=31, scale=2.0)
    for want in ("q", "k"):
        q = q0.clone().requires_grad_(want == "q")
        k = k0.clone().requires_grad_(want == "k")
        out = amf_cpu(_problem(q, k, shape, "soft"))
        (grad,) = torch.autograd.grad(out.square().sum(), (q if want == "q" else k,))
        qr = q0.clone().requires_grad_(want == "q")
        kr = k0.clone().requires_grad_(want == "k")
        (ref,) = torch.autograd.grad(_reference(qr, kr, shape, "soft").square().sum(), (qr if want == "q" else kr,))
        assert rel_err(grad, ref) < 1e-5


def test_gradcheck_float64_tiny():
    shape = (2, 2, 2, 2, 3, 3, 1, "contiguous")
    q, k = make_qk(2, 2, 2, 2, 3, 3, 1, dtype=torch.float64, seed=4)
    q, k = q.requires_grad_(), k.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: amf_cpu(_problem(a, b, shape, "soft")), (q, k))


def test_backward_is_deterministic():
    shape = SHAPES[4]
    q, k = make_qk(1, 2, 3, 9, 11, 16, 0, layout="transposed", seed=8)
    grads = []
    for _ in range(2):
        qq, kk = q.detach().requires_grad_(), k.detach().requires_grad_()
        out = amf_cpu(_problem(qq, kk, shape, "soft"))
        grads.append(torch.autograd.grad(out.sum(), (qq, kk)))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_every_output_element_is_written():
    # In deterministic mode torch fills uninitialised memory with NaN, the kernel's own buffers included.
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        probe = torch.empty(4)
        assert probe.isnan().all(), "this torch does not poison empty tensors; the check would be vacuous"
        shape = SHAPES[3]
        q, k = make_qk(2, 4, 4, 4, 3, 8, 1, seed=12)
        for mode in ("soft", "argmax"):
            out = amf_cpu(_problem(q, k, shape, mode))
            assert torch.isfinite(out).all()
            assert rel_err(out, _reference(q, k, shape, mode)) < 1e-5 or mode == "argmax"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]


def test_public_api_selects_cpu_backend_by_name_and_matches_torch():
    q, k = make_qk(2, 3, 3, 4, 5, 8, 11, layout="transposed", seed=5)
    kw = dict(frames=3, height=4, width=5, text_tokens=11)
    for mode in ("soft", "argmax"):
        fast = compute_amf(q, k, mode=mode, backend="cpu", **kw)
        ref = compute_amf(q, k, mode=mode, backend="reference", **kw)
        assert rel_err(fast, ref) < 1e-5
    out3 = compute_amf(q[0], k[0], backend="cpu", **kw)
    assert out3.shape == (3, 3, 20, 2)


def test_backend_declares_capabilities():
    b = backends()["cpu"]
    assert b.devices == ("cpu",) and b.differentiable and b.unavailable() is None
    assert set(b.dtypes) == {torch.float32, torch.float64, torch.float16, torch.bfloat16}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ops_schema_and_fake_kernels(dtype):
    # bf16 qc, kc give float32 outputs, and bf16 gradients where the CPU multiplies bf16: the fake kernels
    # must say so (opcheck compares their metadata)
    ops = _native.ops()
    qc = torch.randn(2, 24, 16).to(dtype)
    kc = torch.randn(2, 24, 16).to(dtype)
    args = (qc, kc, 2, 3, 4, 0.3, True)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.amf_forward, args, test_utils=utils)
    torch.library.opcheck(ops.amf_forward_scores, args[:-1], test_utils=utils)
    target, lse = ops.amf_forward(*args)
    grad = torch.randn_like(target)
    bwd = (qc, kc, target, lse, grad, 2, 3, 4, 0.3, True, True)
    torch.library.opcheck(ops.amf_backward, bwd, test_utils=utils)


def test_op_rejects_bad_inputs_with_a_clear_message():
    ops = _native.ops()
    qc = torch.randn(1, 12, 8)
    with pytest.raises(RuntimeError, match="frames\\*height\\*width"):
        ops.amf_forward(qc, qc, 2, 2, 2, 1.0, True)
    with pytest.raises(RuntimeError, match="float32, float64 or bfloat16"):
        ops.amf_forward(qc.half(), qc.half(), 3, 2, 2, 1.0, True)


# The CUDA forward (csrc/amf_cuda.cu) shares this module's build; it runs only on a GPU machine.
def _cuda_ready() -> bool:
    return torch.cuda.is_available() and backends()["cuda"].unavailable() is None


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA device and the extension built with CUDA kernels")
@pytest.mark.parametrize("shape", SHAPES + [(1, 48, 2, 15, 22, 64, 226, "transposed")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_forward_matches_reference(shape, dtype):
    b, heads, f, h, w, d, text, layout = shape
    seed = 70 + SHAPES.index(shape) if shape in SHAPES else 99
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=seed)
    q, k = q.cuda(), k.cuda()
    kw = dict(frames=f, height=h, width=w, text_tokens=text)
    soft = compute_amf(q, k, backend="cuda", **kw)
    assert soft.dtype == torch.float32 and soft.shape == (b, f, f, h * w, 2)
    assert rel_err(soft.cpu(), amf_reference(q.cpu(), k.cpu(), **kw)) < SOFT_RTOL[dtype]
    arg = compute_amf(q, k, backend="cuda", mode="argmax", **kw)
    # bf16/fp16 products are exact in fp32; the fp32 sums over H*d terms round to ~1e-4 of a score.
    assert_argmax_agrees(arg.cpu(), q.cpu(), k.cpu(), f, h, w, text, atol=1e-3)


def test_loaded_module_has_this_packages_ops_version():
    assert _native.ops().abi_version() == _native.ABI_VERSION


def test_a_stale_build_is_refused_with_a_reason():
    import subprocess
    import sys

    code = ("import ditflow_fast._native as n\n"
            "n.ABI_VERSION = -1\n"
            "print(n.why_unavailable())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stale build" in out.stdout and "rebuild" in out.stdout
