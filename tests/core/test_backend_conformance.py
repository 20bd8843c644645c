"""Every registered backend against the float64 reference: mode x dtype x awkward shape, and soft gradients.

The cases are drawn from the registry when this module is collected, so a backend is tested here
as soon as it registers: each mode it declares, each dtype it declares, on the CPU when it runs
there (else on CUDA when there is one). A backend that cannot run on this machine
(``unavailable()`` set) is skipped with that reason. Inputs go through the public entry point,
``compute_amf(..., backend=name)``, so validation, dispatch, autocast and the output check are
those of every call. Tolerances are the spec's (``docs/amf.md``, ``_amf_helpers``).

A backend module that fails to import must still be listed, unavailable with the import error:
checked here through ``ditflow-fast info`` in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, make_qk, rel_err

import ditflow_fast
from ditflow_fast import compute_amf
from ditflow_fast.backends.reference import amf_reference

pytestmark = pytest.mark.usefixtures("one_thread")

# (batch, heads, frames, height, width, head_dim, text_tokens, layout): odd frame counts, h != w,
# a single row, a single head, odd head_dims, a text prefix and none, and the three memory layouts
# (the gradient is laid out after its input, so each takes a different path back).
SHAPES = [
    (1, 1, 3, 2, 5, 7, 0, "contiguous"),
    (2, 3, 1, 3, 4, 5, 9, "transposed"),
    (2, 3, 3, 4, 3, 16, 0, "transposed"),
    (1, 3, 2, 1, 7, 9, 4, "strided"),
]
REGISTRY = ditflow_fast.backends()


def _shape_id(s):
    b, heads, f, h, w, d, text, layout = s
    return f"B{b}H{heads}F{f}-{h}x{w}-d{d}-t{text}-{layout}"


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def _cases(grad: bool):
    for name, b in REGISTRY.items():
        modes = ("soft",) if grad else b.modes
        for mode in modes:
            for dtype in b.dtypes:
                for shape in SHAPES:
                    yield pytest.param(name, mode, dtype, shape,
                                       id=f"{name}-{mode}-{_dtype_id(dtype)}-{_shape_id(shape)}")


def _device_or_skip(name: str) -> str:
    b = REGISTRY[name]
    why = b.unavailable()
    if why:
        pytest.skip(f"{name}: {why}")
    if "cpu" in b.devices:
        return "cpu"
    if "cuda" in b.devices and torch.cuda.is_available():
        return "cuda"
    pytest.skip(f"{name} runs on {'/'.join(b.devices) or 'no device'}, none of which is here")


def _inputs(shape, dtype, device, seed, scale):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=seed, scale=scale)
    return q.to(device), k.to(device)


def _kw(shape, mode):
    _, _, f, h, w, _, text, _ = shape
    return dict(frames=f, height=h, width=w, text_tokens=text, mode=mode)


@pytest.mark.parametrize("name,mode,dtype,shape", list(_cases(grad=False)))
def test_forward_agrees_with_float64_reference(name, mode, dtype, shape):
    device = _device_or_skip(name)
    q, k = _inputs(shape, dtype, device, seed=SHAPES.index(shape), scale=2.0 if mode == "soft" else 1.0)
    out = compute_amf(q, k, backend=name, **_kw(shape, mode))
    b, _, f, h, w, _, text, _ = shape
    assert out.shape == (b, f, f, h * w, 2)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.device.type == device
    q, k, out = q.cpu(), k.cpu(), out.cpu()
    if mode == "soft":
        ref = amf_reference(q, k, **_kw(shape, mode))
        assert rel_err(out, ref) < SOFT_RTOL[dtype]
    else:
        assert_argmax_agrees(out, q, k, f, h, w, text)


@pytest.mark.parametrize("name,mode,dtype,shape", list(_cases(grad=True)))
def test_soft_gradients_agree_with_float64_reference(name, mode, dtype, shape):
    device = _device_or_skip(name)
    if not REGISTRY[name].differentiable:
        pytest.skip(f"{name} has no backward")
    q, k = _inputs(shape, dtype, device, seed=10 + SHAPES.index(shape), scale=1.5)
    q.requires_grad_()
    k.requires_grad_()
    out = compute_amf(q, k, backend=name, **_kw(shape, mode))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    dq, dk = torch.autograd.grad(out, (q, k), g.to(out.dtype).to(device))
    qd, kd = (t.detach().cpu().double().requires_grad_() for t in (q, k))
    rq, rk = torch.autograd.grad(amf_reference(qd, kd, **_kw(shape, mode)), (qd, kd), g)
    assert dq.shape == q.shape and dk.shape == k.shape and dq.dtype == dtype and dk.dtype == dtype
    assert rel_err(dq.cpu(), rq) < SOFT_RTOL[dtype] and rel_err(dk.cpu(), rk) < SOFT_RTOL[dtype]
    text = shape[6]
    assert not dq[:, :, :text].any() and not dk[:, :, :text].any()  # text tokens take no gradient


def test_every_backend_has_cases_here():
    """Each registered backend contributes forward cases (the registry is read at collection)."""
    names = {c.values[0] for c in _cases(grad=False)}
    assert names == set(REGISTRY) and {"reference", "torch", "cpu", "cuda", "triton"} <= names


def test_a_backend_module_that_fails_to_import_is_listed_with_the_error():
    code = (
        "import sys\n"
        "sys.modules['ditflow_fast.backends.cpu'] = None  # the next import of it raises ImportError\n"
        "from ditflow_fast.cli.main import main\n"
        "import ditflow_fast, torch\n"
        "b = ditflow_fast.backends()['cpu']\n"
        "print('REASON', b.unavailable())\n"
        "try:\n"
        "    ditflow_fast.compute_amf(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), frames=1, height=2,\n"
        "                             width=2, backend='cpu')\n"
        "except ValueError as e:\n"
        "    print('REFUSED', e)\n"
        "sys.exit(main(['info']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    reason = next(ln for ln in lines if ln.startswith("REASON ")).removeprefix("REASON ")
    assert reason.startswith("ditflow_fast.backends.cpu failed to import: ") and "None in sys.modules" in reason
    refused = next(ln for ln in lines if ln.startswith("REFUSED "))
    assert "backend 'cpu' cannot run this input" in refused and reason in refused
    listed = [ln for ln in lines if ln.strip().startswith("cpu ")]
    assert len(listed) == 1 and f"unavailable: {reason}" in listed[0], run.stdout
    assert any(ln.strip().startswith("torch ") and "]  available" in ln for ln in lines)


def test_the_callable_backends_package_pickles_by_name():
    """``ditflow_fast.backends`` is a package that can be called: it must still travel to Ray or joblib
    workers inside a user's function (cloudpickle) and by plain pickle, as the module it is."""
    import importlib.util
    import pickle

    assert pickle.loads(pickle.dumps(ditflow_fast.backends)) is ditflow_fast.backends
    found = importlib.util.find_spec("cloudpickle") is not None
    cloudpickle = pytest.importorskip("cloudpickle" if found else "ray.cloudpickle")
    fn = cloudpickle.loads(cloudpickle.dumps(lambda: sorted(ditflow_fast.backends())))
    assert fn() == sorted(ditflow_fast.backends())
