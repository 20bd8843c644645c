"""The CPU kernel's scratch buffers kept between calls (``csrc/amf_cpu_scratch.h``).

A kept buffer may be handed out again only when nothing refers to it: not a caller's view, not a copy
saved for a backward, not another thread's call. These tests hold references of each kind and check
that the results still match the float64 reference, and that the cap and the release do what they say.
"""

import threading

import pytest
import torch
from _amf_helpers import SOFT_RTOL, make_qk, rel_err

from ditflow_fast import _native
from ditflow_fast._problem import validate
from ditflow_fast.backends.cpu import amf_cpu, release_scratch
from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.hostmem import available_bytes as _available_bytes

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")


@pytest.fixture
def ops():
    ops = _native.ops()
    ops.release_scratch()
    yield ops
    ops.release_scratch()


def test_a_free_buffer_is_reused_and_a_held_one_is_not(ops):
    first = ops.scratch(0, [3, 7], torch.float32)
    ptr = first.data_ptr()
    del first
    again = ops.scratch(0, [2, 5], torch.float64)  # smaller, another dtype: same buffer
    assert again.data_ptr() == ptr and again.shape == (2, 5) and again.dtype == torch.float64
    view = again[1:]
    del again  # the view still holds it
    other = ops.scratch(0, [2, 5], torch.float64)  # the slot lets the held buffer go and takes another
    assert other.data_ptr() != ptr and ops.scratch_bytes() == 80
    view.fill_(1.0)
    other.fill_(2.0)
    assert bool((view == 1.0).all())


def test_the_cap_bounds_what_is_kept(ops, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_SCRATCH_MB", str(1000 / 2**20))  # 1,000 bytes
    small = ops.scratch(0, [100], torch.float32)  # 400 bytes: kept
    assert ops.scratch_bytes() == 400
    big = ops.scratch(1, [200], torch.float32)  # 800 more would pass the cap: not kept
    assert ops.scratch_bytes() == 400 and big.shape == (200,)
    del small
    assert ops.release_scratch() == 400 and ops.scratch_bytes() == 0
    monkeypatch.setenv("DITFLOW_FAST_CPU_SCRATCH_MB", "0")
    shape = dict(frames=2, height=3, width=4, text_tokens=0, temperature=2.0, mode="argmax")
    amf_cpu(validate(*make_qk(1, 2, 2, 3, 4, 8), **shape))
    assert ops.scratch_bytes() == 0


def test_release_forgets_a_buffer_in_use_without_freeing_it_under_its_user(ops):
    held = ops.scratch(0, [64], torch.float32).fill_(3.0)
    assert release_scratch() == 256 and ops.scratch_bytes() == 0
    ops.scratch(0, [64], torch.float32).fill_(4.0)  # a new buffer for the slot
    assert bool((held == 3.0).all())


@pytest.mark.parametrize("raw", ["lots", "-1", "nan", "inf"])
def test_a_bad_cap_is_refused_by_name(ops, monkeypatch, raw):
    monkeypatch.setenv("DITFLOW_FAST_CPU_SCRATCH_MB", raw)
    with pytest.raises(RuntimeError, match="DITFLOW_FAST_CPU_SCRATCH_MB"):
        ops.scratch(0, [4], torch.float32)


def test_only_the_gather_slots_are_open_to_python(ops):
    with pytest.raises(RuntimeError, match="slot must be 0"):
        ops.scratch(2, [4], torch.float32)


def test_the_default_cap_grows_past_64_mib_with_the_memory_available(ops, monkeypatch):
    monkeypatch.delenv("DITFLOW_FAST_CPU_SCRATCH_MB", raising=False)
    mib = 80  # past the 64 MiB floor: kept when an eighth of MemAvailable allows it
    buf = ops.scratch(0, [mib << 18], torch.float32)
    del buf
    kept = _available_bytes() / 8 >= mib << 20
    assert ops.scratch_bytes() == (mib << 20 if kept else 0)


@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
def test_gradients_in_kept_buffers_are_never_overwritten_while_held(ops, layout):
    """The backward lays q's and k's gradients out in slots 12 and 13: a gradient the caller still holds must
    survive the next call, and one let go is reused, so its pages are not faulted in again."""
    shape = dict(frames=2, height=3, width=5, text_tokens=3, mode="soft")
    grads_out = torch.randn(1, 2, 2, 15, 2)
    held, refs, ptrs = [], [], []
    for seed in range(3):
        q, k = make_qk(1, 4, 2, 3, 5, 8, text_tokens=3, seed=seed)
        if layout == "bthd":
            q, k = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k))
        q, k = q.requires_grad_(), k.requires_grad_()
        dq, dk = torch.autograd.grad(amf_cpu(validate(q, k, temperature=2.0, **shape)), (q, k), grads_out)
        qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
        refs.append(torch.autograd.grad(amf_reference(qd, kd, temperature=2.0, **shape), (qd, kd), grads_out.double()))
        ptrs.append(dq.data_ptr())
        if seed < 2:
            held.append((dq, dk))  # the first two are held: the third call must take other buffers
        else:
            del dq, dk
    for (dq, dk), (rq, rk) in zip(held, refs, strict=False):
        assert rel_err(dq, rq) < SOFT_RTOL[torch.float32] and rel_err(dk, rk) < SOFT_RTOL[torch.float32]
        assert dq[:, :, :3].abs().max() == 0 and dk[:, :, :3].abs().max() == 0  # text tokens
    assert len(set(ptrs)) == 3
    q, k = make_qk(1, 4, 2, 3, 5, 8, text_tokens=3, seed=3)
    if layout == "bthd":
        q, k = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k))
    q = q.requires_grad_()
    (dq,) = torch.autograd.grad(amf_cpu(validate(q, k, temperature=2.0, **shape)), (q,), grads_out)
    ptr = dq.data_ptr()
    assert ops.scratch(12, [8], torch.float32).data_ptr() != ptr  # held: slot 12 takes another buffer
    (dq,) = torch.autograd.grad(amf_cpu(validate(q, k, temperature=2.0, **shape)), (q,), grads_out)
    ptr = dq.data_ptr()
    del dq
    assert ops.scratch(12, [8], torch.float32).data_ptr() == ptr  # let go: the slot serves it again


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["soft", "argmax"])
def test_calls_of_changing_shapes_agree_with_the_reference(ops, dtype, mode):
    # growing, shrinking and growing again: each call may take, grow or drop the previous call's buffers
    shapes = [(2, 3, 5, 24, 3), (3, 7, 9, 40, 0), (1, 2, 3, 8, 5), (3, 7, 9, 40, 2)]
    for seed, (frames, h, w, d, text) in enumerate(shapes):
        q, k = make_qk(2, 3, frames, h, w, d, text_tokens=text, dtype=dtype, seed=seed)
        shape = dict(frames=frames, height=h, width=w, text_tokens=text, mode=mode)
        out = amf_cpu(validate(q, k, temperature=2.0, **shape))
        ref = amf_reference(q.double(), k.double(), temperature=2.0, **shape)
        if mode == "soft":
            assert rel_err(out, ref) < SOFT_RTOL[torch.float32]
        else:
            assert torch.equal(out.double(), ref)


def test_two_forwards_before_their_backwards(ops):
    """The first forward's gathered copies are saved for its backward: the second must not overwrite them."""
    shape = dict(frames=3, height=4, width=5, text_tokens=6, mode="soft")
    pairs = [make_qk(1, 2, 3, 4, 5, 12, text_tokens=6, seed=s) for s in (1, 2)]
    grads_out = torch.randn(1, 3, 3, 20, 2, dtype=torch.float64)
    outs, leaves = [], []
    for q, k in pairs:
        q, k = q.requires_grad_(), k.requires_grad_()
        leaves.append((q, k))
        outs.append(amf_cpu(validate(q, k, temperature=2.0, **shape)))
    for (q, k), out in zip(leaves, outs, strict=True):
        dq, dk = torch.autograd.grad(out, (q, k), grads_out.float())
        qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
        rq, rk = torch.autograd.grad(amf_reference(qd, kd, temperature=2.0, **shape), (qd, kd), grads_out)
        assert rel_err(dq, rq) < SOFT_RTOL[torch.float32] and rel_err(dk, rk) < SOFT_RTOL[torch.float32]


def test_concurrent_calls_do_not_share_buffers(ops):
    shape = dict(frames=2, height=6, width=7, text_tokens=4, mode="soft")
    problems = [make_qk(1, 4, 2, 6, 7, 16, text_tokens=4, seed=s) for s in range(2)]
    refs = [amf_reference(q.double(), k.double(), temperature=2.0, **shape) for q, k in problems]
    errors = []

    def work(i):
        for _ in range(20):
            errors.append(rel_err(amf_cpu(validate(*problems[i], temperature=2.0, **shape)), refs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 40 and max(errors) < SOFT_RTOL[torch.float32]


@pytest.fixture
def two_threads():
    """The kernel's worker threads do not inherit the caller's inference mode: run some."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_buffers_from_an_inference_mode_call_serve_later_calls_with_gradients(ops, two_threads):
    shape = dict(frames=3, height=4, width=5, text_tokens=2, temperature=2.0)
    q, k = make_qk(1, 2, 3, 4, 5, 8, text_tokens=2, seed=5)
    with torch.inference_mode():
        for mode in ("argmax", "soft"):
            ref = amf_reference(q.double(), k.double(), mode=mode, **shape)
            out = amf_cpu(validate(q, k, mode=mode, **shape))
            assert torch.equal(out.double(), ref) if mode == "argmax" else rel_err(out, ref) < SOFT_RTOL[torch.float32]
    assert ops.scratch_bytes() > 0
    qg = q.clone().requires_grad_()
    (dq,) = torch.autograd.grad(amf_cpu(validate(qg, k, mode="soft", **shape)).square().sum(), qg)
    qd = q.double().requires_grad_()
    (ref,) = torch.autograd.grad(amf_reference(qd, k.double(), mode="soft", **shape).square().sum(), qd)
    assert rel_err(dq, ref) < SOFT_RTOL[torch.float32]
