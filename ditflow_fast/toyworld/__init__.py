"""A toy world where motion transfer can be measured on a CPU.

- :mod:`.world`: synthetic clips (textured shapes moving in straight lines) with conditions and tracks;
- :mod:`.model`: the tiny pixel-space CogVideoX DiT, its condition embedding, save/load;
- :mod:`.train`: its bounded-time CPU training (``scripts/train_tiny_dit.py``);
- :mod:`.sample`: plain sampling with classifier-free guidance;
- :mod:`.metrics`: colour tracker and the Motion Fidelity score;
- :mod:`.quality`: is a sample the conditioned object moving coherently (shape IoU, kind, speed, jerk);
- :mod:`.media`: GIF / PNG output;
- :mod:`.diagnostics`: per-block AMF accuracy against the world's ground truth;
- :mod:`.settings`, :mod:`.demo`, :mod:`.cli`: ``ditflow-fast demo``, every guidance row through
  :mod:`ditflow_fast.guidance`.

Nothing here imports diffusers at import time.
"""
