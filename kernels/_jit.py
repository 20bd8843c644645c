"""Turning the kernel functions into Triton kernels at launch time, not at import time.

The kernel files hold plain Python functions written in Triton's language. ``triton.jit``
decides between compiling and interpreting when it is applied, by reading ``TRITON_INTERPRET``;
applying it at import time would freeze that choice for the whole process, so a test that sets
the variable after something else imported the kernels would silently get compiled kernels (or
a GPU run would get interpreted ones). :func:`kernel` applies the choice when a launcher asks,
from the environment at that moment, and caches one object per (function, mode).

Autotuning needs a GPU driver, so under the interpreter the launchers pass a fixed
configuration; on a GPU :func:`kernel` wraps the compiled function in ``triton.autotune``.
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
