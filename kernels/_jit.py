"""Turning the kernel functions into launchable Triton kernels when a launcher first asks.

The kernel files hold plain Python functions in Triton's language, not ``@triton.jit``-decorated
ones, so importing them decides nothing and needs no GPU. :func:`kernel` wraps a function on
first launch, for the mode ``TRITON_INTERPRET`` asks for at that moment, and caches one object
per (function, mode): interpreted, compiled, or compiled and autotuned over the GPU configs.

Triton itself wraps its standard library (``tl.max``, ``tl.sum``...) when it is imported, so
interpreting still needs ``TRITON_INTERPRET=1`` set before the process's first ``import
triton``; this package never imports triton before a kernel launches, so setting the variable
any time before the first launch is enough (``tests/test_triton_kernels.py`` relies on that).

Autotuning needs a GPU driver, so under the interpreter the launchers pass a fixed
configuration.
"""

from __future__ import annotations

import os

_CACHE: dict = {}


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def kernel(fn, *, configs=None, key=(), restore_value=()):
    """The launchable form of ``fn``: interpreted, compiled, or compiled and autotuned over ``configs``."""
    interp = interpreting()
    cache_key = (fn, interp)
    if cache_key not in _CACHE:
        import triton

        if interp:
            from triton.runtime.interpreter import InterpretedFunction

            obj = InterpretedFunction(fn)
        else:
            from triton.runtime.jit import JITFunction

            obj = JITFunction(fn)
            if configs:
                obj = triton.autotune(configs=list(configs), key=list(key), restore_value=list(restore_value))(obj)
        _CACHE[cache_key] = obj
    return _CACHE[cache_key]
