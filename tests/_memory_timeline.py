"""Measured memory of one guided iteration on the CPU, with torch's memory timeline: what the families' memory
models (``families/<name>/memory.py``) are checked against (tests/families/test_*_memory.py)."""

import contextlib
import json
import warnings
import weakref

import pytest
import torch


class HostMemory(torch.autograd.graph.saved_tensors_hooks):
    """What ``offload.activation_offload`` does on a GPU, with the CPU standing in for the GPU: the packed copies
    live in numpy memory (invisible to the profiler, as host memory is not GPU memory), each tensor object once
    (as ActivationOffload); unpacking makes a tracked tensor (the host-to-device copy)."""

    def __init__(self):
        cache = {}

        def pack(t):
            hit = cache.get(id(t))
            if hit is not None and hit[0]() is t:
                return hit[1]
            packed = (t.dtype, t.shape, t.detach().contiguous().view(torch.uint8).numpy().copy())
            cache[id(t)] = (weakref.ref(t), packed)
            return packed

        def unpack(packed):
            dtype, shape, array = packed
            return torch.from_numpy(array).view(dtype).reshape(shape).clone()

        super().__init__(pack, unpack)


def guided_iteration_peak(tmp_path, family, transformer, latent, text, t, emb=None, *, block: int, weights,
                          dtype, host: bool = False) -> int:
    """Peak minus start of one steady-state guided iteration: ``family``'s forward truncated after ``block`` with
    q/k captured, a dense gradient into q and k (``weights``: ``(wq, wk)``, what the AMF loss gives), backward
    into ``latent`` and ``emb``. ``host``: the saved tensors in (emulated) host memory. Skips the test where the
    timeline exporter is unavailable."""
    wq, wk = weights

    def iteration():
        with HostMemory() if host else contextlib.nullcontext():
            ctrl = family.run_until(transformer, latent.to(dtype), text, t, emb, stop_after=block, qk_blocks=[block])
        q, k = ctrl.qk.pop(block)
        ((q * wq).sum() + (k * wk).sum()).float().backward()
        latent.grad = None
        if emb is not None:
            emb.grad = None

    with emulated_bf16_off(dtype):
        return timeline_peak(tmp_path, iteration)


def emulated_bf16_off(dtype):
    """oneDNN off for bf16 on a CPU without bf16 units (no AVX512-BF16 or AMX), else nothing.

    There oneDNN's bf16 matmul converts its operands to float32 in buffers of its own, which a GPU's bf16 GEMM does
    not allocate: on the Intel Xeon of session 20 the LTX bf16 checkpointed iteration peaked at 8.34 MiB with oneDNN
    and 7.40 MiB without, against the model's 7.39 MiB (measured where the CPU multiplies bf16 natively).
    """
    try:
        with open("/proc/cpuinfo") as f:
            native = any(flag in f.read() for flag in ("avx512_bf16", "amx_bf16"))
    except OSError:
        native = True
    if dtype != torch.bfloat16 or native:
        return contextlib.nullcontext()
    return torch.backends.mkldnn.flags(enabled=False)


def timeline_peak(tmp_path, iteration) -> int:
    """Peak minus start of the CPU memory timeline of one steady-state call of ``iteration`` (after a warm-up
    call: lazily created buffers are not part of the steady state). Skips the test where the exporter is
    unavailable."""
    iteration()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        iteration()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            prof.export_memory_timeline(str(tmp_path / "t.json"), device="cpu")
        except Exception as exc:  # the exporter is deprecated; its absence must not fail CI
            pytest.skip(f"memory timeline unavailable: {exc}")
    sizes = [sum(s) for s in json.loads((tmp_path / "t.json").read_text())[1]]
    return max(sizes) - sizes[0]
