"""Reproduce ``assets/tiny_wan``: ``OMP_NUM_THREADS=1 nice -n 19 python scripts/train_tiny_wan.py --minutes 60``.

A thin wrapper over :mod:`ditflow_fast.toyworld.train_wan` (the objective, the resume rules and the
defaults are in its docstring); it trains in the latents of ``assets/tiny_dit``'s frame autoencoder.
"""

from ditflow_fast.toyworld.train_wan import main

if __name__ == "__main__":
    raise SystemExit(main())
