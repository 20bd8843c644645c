"""Triton kernels of ditflow_fast, installed as ``ditflow_fast.kernels`` (docs/triton.md).

- :mod:`.amf_fwd`: the fused forward (soft and argmax; log-sum-exp kept for the backward);
- :mod:`.amf_bwd`: the backward: the logit-gradient kernel and the two reductions (dQ, key-stationary dK);
- :mod:`._scores`: ``score_tile``, the one K-loop over head slices both of them call;
- :mod:`._jit`: interpret, compile or autotune at launch time, for kernels and the helpers they call;
- :mod:`.compile_check`: cubins for sm_80/sm_90 without a GPU (spills, pipelining, shared memory).

This ``__init__`` imports no triton; its modules do, and the launchers in
``ditflow_fast.backends.triton_launch`` import them only when a kernel first runs.
"""
