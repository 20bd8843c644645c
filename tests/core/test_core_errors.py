"""Every bad input gets a ValueError or TypeError that names the argument."""

import math

import pytest
import torch

from ditflow_fast import choose_backend, compute_amf
from ditflow_fast import dispatch as dispatch_mod
from ditflow_fast.dispatch import Backend

F, H, W, TEXT = 2, 3, 4, 5
T = TEXT + F * H * W
OK = dict(frames=F, height=H, width=W, text_tokens=TEXT)


def qk(shape=(1, 2, T, 8), dtype=torch.float32):
    return torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)


def expect(err, match, q, k, **overrides):
    with pytest.raises(err, match=match):
        compute_amf(q, k, **{**OK, **overrides})


def test_wrong_rank():
    q, k = qk((2, 1, 2, T, 8))
    expect(ValueError, r"^q must be \[B, H, T, d\]", q, k)


def test_not_a_tensor():
    _, k = qk()
    expect(TypeError, "q must be a torch.Tensor", [[1.0]], k)


def test_shape_mismatch():
    q, _ = qk()
    _, k = qk((1, 3, T, 8))
    expect(ValueError, "q and k must have the same shape", q, k)


def test_token_count_mismatch():
    q, k = qk((1, 2, T + 1, 8))
    expect(ValueError, r"T=30 must equal text_tokens \+ frames\*height\*width", q, k)


def test_integer_dtype():
    q, k = qk(dtype=torch.int32)
    expect(TypeError, "q must be float32, float16, bfloat16 or float64", q, k)


def test_dtype_mismatch():
    q, _ = qk()
    _, k = qk(dtype=torch.float16)
    expect(TypeError, "q and k must have the same dtype", q, k)


def test_device_mismatch():
    q, _ = qk()
    k = torch.empty(q.shape, device="meta")
    expect(ValueError, "q and k must be on the same device", q, k)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_bad_temperature(temperature):
    expect(ValueError, "temperature must be finite and > 0", *qk(), temperature=temperature)


def test_temperature_not_a_number():
    expect(TypeError, "temperature must be a real number", *qk(), temperature="2")


@pytest.mark.parametrize("name", ["frames", "height", "width"])
def test_geometry_below_one(name):
    expect(ValueError, f"{name} must be >= 1", *qk(), **{name: 0})


def test_geometry_not_int():
    expect(TypeError, "frames must be an int", *qk(), frames=2.0)


def test_negative_text_tokens():
    expect(ValueError, "text_tokens must be an int >= 0", *qk(), text_tokens=-1)


def test_unknown_mode():
    expect(ValueError, "mode must be one of", *qk(), mode="hard")


def test_unknown_backend():
    expect(ValueError, "backend must be 'auto' or one of", *qk(), backend="nope")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["q", "k"])
def test_non_finite_input_is_an_error(bad, which):
    q, k = qk()
    (q if which == "q" else k)[0, 1, TEXT + 3, 2] = bad
    expect(ValueError, f"{which} contains NaN or inf", q, k)
    expect(ValueError, f"{which} contains NaN or inf", q, k, mode="argmax")


@pytest.fixture
def picky_backend():
    backend = Backend(
        name="picky", summary="test double: takes only float64 and has no backward",
        run=lambda p: torch.zeros(p.out_shape()), devices=("cpu",), dtypes=(torch.float64,),
        differentiable=False, auto_rank=1, unavailable=lambda: None,
    )
    dispatch_mod.register(backend)
    yield backend
    dispatch_mod._REGISTRY.pop("picky")


def test_named_backend_that_cannot_run_explains_why(picky_backend):
    q, k = qk()
    expect(ValueError, r"backend 'picky' cannot run this input: does not take torch.float32", q, k, backend="picky")
    q.requires_grad_()
    with pytest.raises(ValueError, match="has no backward"):
        compute_amf(q.double(), k.double(), backend="picky", **OK)


def test_auto_skips_with_reasons(picky_backend):
    q, k = qk()
    choice = choose_backend(q, k, **OK)
    assert choice.name != "picky" and dispatch_mod.backends()[choice.name].auto_rank is not None
    assert choice.skipped["picky"] == ["does not take torch.float32"]
    choice64 = choose_backend(q.double(), k.double(), **OK)
    assert choice64.name == "picky" and choice64.skipped == {}


def test_backend_name_cannot_be_reused():
    with pytest.raises(ValueError, match="taken"):
        dispatch_mod.register(dispatch_mod.backends()["torch"])


def test_chunk_rows_must_be_positive():
    from ditflow_fast._problem import validate
    from ditflow_fast.backends.torch_chunked import amf_torch

    p = validate(*qk(), temperature=2.0, mode="soft", **OK)
    with pytest.raises(ValueError, match="chunk_rows must be an int >= 1"):
        amf_torch(p, chunk_rows=0)
