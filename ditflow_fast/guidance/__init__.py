"""DiTFlow guidance on diffusers' video transformers (any family of ``ditflow_fast.families``).

- :mod:`.config`: the run's settings and their defaults per model; :mod:`.run_key`: what a saved state
  must match; :mod:`.loop`: the guided denoising loop (``Guide``), resumable;
- :mod:`.controller`: what every family's attention processors ask (capture q/k, inject K/V, stop the
  forward); :mod:`.forward`: the truncated forward;
- :mod:`.losses`: DiTFlow's AMF loss, MOFT, SMM; :mod:`.embeds`: saved embeddings (zero-shot);
  :mod:`.ref_cache`: reference latents and targets shared by runs.

Everything of one model family (its attention processors, positional embeddings, loading, memory model,
tiny test models) is in ``families/<name>/``.
"""

from .controller import GuidanceController, StopForward, controller_of
from .forward import run_until

__all__ = ["GuidanceController", "StopForward", "controller_of", "run_until"]
