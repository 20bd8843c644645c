"""compute_amf itself can sit inside torch.compile(fullgraph=True): it routes through the custom op."""

import torch
from _amf_helpers import make_qk

from ditflow_fast import amf_loss, compute_amf

GEOM = dict(frames=2, height=3, width=4, text_tokens=3)


def test_compute_amf_compiles_fullgraph_with_backward():
    q, k = make_qk(1, 2, 2, 3, 4, 8, 3, seed=31)

    def step(q_, k_, ref):
        return amf_loss(compute_amf(q_, k_, **GEOM), ref)

    ref = compute_amf(q, k.flip(2), mode="argmax", **GEOM)
    qe = q.clone().requires_grad_()
    eager = step(qe, k, ref)
    eager.backward()
    qc = q.clone().requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend="eager")(qc, k, ref)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(qc.grad, qe.grad)
