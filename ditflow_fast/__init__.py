"""ditflow_fast: fused Attention Motion Flow (DiTFlow) kernels and guidance for video DiTs.

``ops`` is imported for its side effect (it registers ``torch.ops.ditflow_fast.amf``); ``backends``
is the backends package, and calling it, ``ditflow_fast.backends()``, lists the registry.
"""

from . import backends, ops  # noqa: F401
from .api import choose_backend, compute_amf
from .loss import amf_loss

__all__ = ["compute_amf", "amf_loss", "choose_backend", "backends"]
__version__ = "0.1.0"
