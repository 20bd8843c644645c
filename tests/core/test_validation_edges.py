"""Arguments a review found refused unclearly or not at all: the custom op's backend, bthd shapes in the
mismatch message, numpy and out-of-range temperatures."""

import numpy as np
import pytest
import torch

from ditflow_fast import compute_amf, ops

KW = dict(frames=2, height=3, width=4)


@pytest.mark.parametrize("backend", [None, 3, "bogus"])
def test_the_custom_op_refuses_a_backend_by_name_before_entering_the_op(backend):
    q = torch.randn(1, 2, 24, 8)
    for fn in (compute_amf, ops.amf):
        with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
            fn(q, q, **KW, backend=backend)


def test_a_bthd_shape_mismatch_names_the_shapes_as_given():
    with pytest.raises(ValueError, match=r"got q \(1, 24, 2, 8\) and k \(1, 24, 3, 8\)"):
        compute_amf(torch.randn(1, 24, 2, 8), torch.randn(1, 24, 3, 8), **KW, layout="bthd")


def test_temperatures_numpy_or_past_floats_range():
    q = torch.randn(1, 2, 24, 8)
    want = compute_amf(q, q, **KW, temperature=2.0)
    assert torch.equal(compute_amf(q, q, **KW, temperature=np.float32(2.0)), want)
    with pytest.raises(ValueError, match="temperature must be finite and > 0, got inf"):
        compute_amf(q, q, **KW, temperature=10 ** 400)
    with pytest.raises(TypeError, match="temperature must be a real number, got bool"):
        compute_amf(q, q, **KW, temperature=True)
