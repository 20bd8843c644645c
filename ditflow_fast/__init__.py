"""ditflow_fast: fused Attention Motion Flow (DiTFlow) kernels and guidance for video DiTs."""

from . import ops  # noqa: E402,F401  (registers torch.ops.ditflow_fast.amf)
from .api import choose_backend, compute_amf
from .dispatch import backends
from .loss import amf_loss

__all__ = ["compute_amf", "amf_loss", "choose_backend", "backends"]
__version__ = "0.1.0"
