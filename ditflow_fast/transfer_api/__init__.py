"""Motion transfer as a library: :func:`transfer` (``ditflow_fast.transfer``), the options, a held model, the result.

- :mod:`.options`: ``TransferOptions``, ``ditflow-fast transfer``'s options and their rules;
- :mod:`.checks`: what a run checks before it loads or writes anything (device, ``out``, the model's configs);
- :mod:`.held`: ``HeldModel``, a model loaded once (or a caller's diffusers pipeline) for many transfers;
- :mod:`.run`: ``transfer`` and ``run``, in memory or into a resumable folder;
- :mod:`.result`: ``TransferResult``.
"""

from .held import HeldModel
from .options import TransferOptions
from .result import TransferResult
from .run import run, transfer

__all__ = ["transfer", "run", "HeldModel", "TransferOptions", "TransferResult"]
