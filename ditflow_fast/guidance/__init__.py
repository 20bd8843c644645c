"""DiTFlow guidance on diffusers' CogVideoX: capture, KV injection, truncated forward, the loop."""

from .forward import base_position_table, position_override, rotary_embedding, run_until
from .processor import GuidanceController, GuidedAttnProcessor, StopForward, controller_of, install, uninstall

__all__ = [
    "GuidanceController", "GuidedAttnProcessor", "StopForward", "base_position_table", "controller_of", "install",
    "position_override", "rotary_embedding", "run_until", "uninstall",
]
