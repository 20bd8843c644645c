"""The AMF backends, each registering itself with :mod:`ditflow_fast.dispatch` when imported.

Modules (imported here in this order, which is the order ``ditflow-fast info`` lists them in):

- :mod:`.reference`: ``reference``, the literal float64 definition (the oracle), and the research
  code's procedure re-implemented for the benchmark;
- :mod:`.torch_chunked`: ``torch``, chunked over query rows, any device torch runs on;
- :mod:`.cpu`: ``cpu``, the fused C++ kernel of the native extension (optional);
- :mod:`.cuda`: ``cuda``, the native extension's tensor-core forward (optional);
- :mod:`.triton_launch`: ``triton``, the launchers of the fused Triton kernels in
  ``ditflow_fast.kernels`` (optional);
- :mod:`.layout`: what all of them share: the heads-concatenated input, the output layout,
  displacements, and the expansion of ``[B, N, H*d]`` gradients to the shape of ``q``/``k``;
- :mod:`.ranking`: the order ``backend="auto"`` tries them in, and why.

No module is named after a library (``torch_chunked``, ``triton_launch``): importing a submodule
``torch`` would bind that name in this package's namespace to it, in place of the library.

An optional backend whose module fails to import is registered anyway, at its rank, with the
import error as its ``unavailable`` reason: it is refused by name and skipped by ``auto`` with
that reason, and ``ditflow-fast info`` prints it, rather than vanishing from the registry.

``ditflow_fast.backends`` is both this package and, from before it existed, the public function
listing the registry: calling the package, ``ditflow_fast.backends()``, returns
:func:`ditflow_fast.dispatch.backends`, so both readings work.
"""

from __future__ import annotations

import importlib
import sys
import types

from ..dispatch import Backend, backends, register
from . import reference, torch_chunked  # noqa: F401  (register "reference" and "torch")
from .ranking import AUTO_RANK


def _not_loaded(module: str, name: str, exc: ImportError) -> None:
    """Registers ``name`` as unavailable because ``module`` failed to import (a broken install)."""
    if name in backends():  # it failed after registering itself: keep the real one
        return
    reason = f"{__name__}.{module} failed to import: {type(exc).__name__}: {exc}"

    def run(problem):
        raise RuntimeError(reason)

    register(Backend(
        name=name, summary=f"not loaded: {__name__}.{module} did not import", run=run, devices=(), dtypes=(),
        auto_rank=AUTO_RANK.get(name), unavailable=lambda: reason,
    ))


try:
    from . import cpu  # noqa: F401
except ImportError as exc:
    _not_loaded("cpu", "cpu", exc)
try:
    from . import cuda  # noqa: F401
except ImportError as exc:
    _not_loaded("cuda", "cuda", exc)
try:
    from . import triton_launch  # noqa: F401
except ImportError as exc:
    _not_loaded("triton_launch", "triton", exc)


class _CallablePackage(types.ModuleType):
    def __call__(self):
        return backends()

    def __reduce__(self):
        # pickled by name, as a module is: cloudpickle (Ray, joblib) handles ModuleType itself, not a subclass
        return (importlib.import_module, (self.__name__,))


sys.modules[__name__].__class__ = _CallablePackage
