"""A toy world where motion transfer can be measured on a CPU: an application of the library.

It uses only the library's public surface (``ditflow_fast.families``, ``guidance.config``/``guidance.loop``,
``compute_amf``, ``video_io``, ``atomic``), and no library module imports it: only the application
layer does (the ``demo`` command, the viewer's default model, the tracker validation); a test
(``tests/test_toyworld_boundary.py``) keeps it so.

- :mod:`.world`: synthetic clips (textured shapes moving in straight lines) with conditions and tracks;
- :mod:`.codec`: the frame autoencoder whose latents the models denoise (or the identity, pixel models);
- :mod:`.model`: the tiny CogVideoX-architecture DiT (and loading of Wan ones), its condition embedding, save/load;
- :mod:`.train`, :mod:`.train_vae`, :mod:`.train_wan`: bounded-time CPU training (``scripts/``);
- :mod:`.sample`: plain sampling with classifier-free guidance;
- :mod:`.metrics`: colour tracker and the Motion Fidelity score;
- :mod:`.quality`: is a sample the conditioned object moving coherently (shape IoU, kind, speed, jerk),
  and the one-step denoising probe;
- :mod:`.media`: GIF / PNG output;
- :mod:`.diagnostics`: per-block AMF accuracy against the world's ground truth;
- :mod:`.settings`, :mod:`.demo`, :mod:`.cli`: ``ditflow-fast demo``, every guidance row through
  :mod:`ditflow_fast.guidance`.

Nothing here imports diffusers at import time.
"""
