"""ditflow_fast: fused Attention Motion Flow (DiTFlow) kernels and guidance for video DiTs.

Layers, lowest first (docs/architecture.md): the AMF core (:mod:`._problem` validation,
:mod:`.geometry`, :mod:`.dispatch` the registry, :mod:`.backends` the backends, :mod:`.eager` the one
eager path, :mod:`.api` ``compute_amf``, :mod:`.ops` the custom op, :mod:`.loss`, :mod:`.distributed_amf`,
``ditflow_fast.kernels`` the Triton kernels, :mod:`._native` the C++/CUDA extension loader); the model
layer (:mod:`.families`, :mod:`.guidance`); motion transfer as a library (:mod:`.transfer_api`:
``ditflow_fast.transfer``); the tools (:mod:`.viewer`, :mod:`.bench`, :mod:`.batch`, :mod:`.app`, :mod:`.cli`,
with :mod:`.atomic`, :mod:`.video_io`, :mod:`.compat`, :mod:`.errors`); and the application :mod:`.toyworld`,
which nothing in the library imports.

``ops`` is imported for its side effect (it registers ``torch.ops.ditflow_fast.amf``); ``backends``
is the backends package, and calling it, ``ditflow_fast.backends()``, lists the registry.
"""

from . import backends, ops  # noqa: F401
from .api import choose_backend, compute_amf
from .loss import amf_loss

__all__ = ["compute_amf", "amf_loss", "choose_backend", "backends", "transfer", "HeldModel", "TransferResult"]
_TRANSFER = ("transfer", "HeldModel", "TransferOptions", "TransferResult")


def __getattr__(name):
    # motion transfer on first use: `import ditflow_fast` stays as light as the AMF core
    if name in _TRANSFER:
        from . import transfer_api

        return getattr(transfer_api, name)
    raise AttributeError(f"module 'ditflow_fast' has no attribute {name!r}")
__version__ = "0.1.0"
