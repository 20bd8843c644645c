"""DiTFlow guidance on diffusers' video transformers (any family of ``ditflow_fast.families``).

- :mod:`.config`: the run's settings and their defaults per model; :mod:`.run_key`: what a saved state
  must match; :mod:`.loop`: the guided denoising loop (``Guide``), resumable;
- :mod:`.processor`: the attention processor that captures q/k, injects K/V and stops the forward;
  :mod:`.forward`: the truncated forward and the positional-embedding overrides;
- :mod:`.losses`: DiTFlow's AMF loss, MOFT, SMM; :mod:`.embeds`: saved embeddings (zero-shot);
  :mod:`.ref_cache`: reference latents and targets shared by runs.

Everything of one model family (loading, memory model, tiny test models) is in ``families/<name>/``.
"""

from .forward import base_position_table, position_override, rotary_embedding, run_until
from .processor import GuidanceController, GuidedAttnProcessor, StopForward, controller_of, install, uninstall

__all__ = [
    "GuidanceController", "GuidedAttnProcessor", "StopForward", "base_position_table", "controller_of", "install",
    "position_override", "rotary_embedding", "run_until", "uninstall",
]
