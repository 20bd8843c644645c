"""Reproduce ``assets/tiny_dit``: ``OMP_NUM_THREADS=1 nice -n 19 python scripts/train_tiny_dit.py --minutes 40``.

A thin wrapper over :mod:`ditflow_fast.toyworld.train` (see its docstring for the objective and resume rules).
"""

from ditflow_fast.toyworld.train import main

if __name__ == "__main__":
    raise SystemExit(main())
