"""Train the frame autoencoder a latent tiny DiT works in (step 1 of 2; see docs/toyworld.md for the commands).

A thin wrapper over :mod:`ditflow_fast.toyworld.train_vae`; the DiT is then trained with
``scripts/train_tiny_dit.py --vae <the same folder>``.
"""

from ditflow_fast.toyworld.train_vae import main

if __name__ == "__main__":
    raise SystemExit(main())
