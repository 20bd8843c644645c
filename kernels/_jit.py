"""Turning the kernel functions into launchable Triton kernels when a launcher first asks.

The kernel files hold plain Python functions in Triton's language, not ``@triton.jit``-decorated
ones, so importing them decides nothing and needs no GPU. :func:`kernel` wraps a function on
first launch, for the mode ``TRITON_INTERPRET`` asks for at that moment, and caches one object
per (function, mode): interpreted or compiled, and one compiled and autotuned over the GPU configs.

Triton itself wraps its standard library (``tl.max``, ``tl.sum``...) when it is imported, so
interpreting still needs ``TRITON_INTERPRET=1`` set before the process's first ``import
triton``; this package never imports triton before a kernel launches, so setting the variable
any time before the first launch is enough (``tests/core/test_triton_kernels.py`` relies on that).

Device functions the kernels call (:func:`helper`) take the same path: a kernel is wrapped as a
copy whose global names for its helpers point at the helpers' wrapped forms for the same mode, so
a compiled kernel calls (and the compiler inlines) a compiled helper, an interpreted kernel an
interpreted one, and every kernel calling a helper shares its one wrapped object. The modules'
own globals keep the plain functions.

Autotuning needs a GPU driver, so under the interpreter the launchers pass a fixed
configuration.
"""

from __future__ import annotations

import os
import types

_CACHE: dict = {}
_HELPER = "__ditflow_fast_helper__"


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def helper(fn):
    """Mark ``fn`` as a device function for the kernels to call; it stays a plain function."""
    setattr(fn, _HELPER, True)
    return fn


def is_helper(obj) -> bool:
    return getattr(obj, _HELPER, False) is True


def _names(code) -> set:
    """Every global or attribute name ``code`` and the code nested in it load."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _with_wrapped_helpers(fn, interpret: bool):
    """``fn`` itself, or a copy of it whose globals name the wrapped forms of the helpers it calls."""
    # Only names the code uses: a helper sees itself among its module's globals.
    helpers = {name: wrap(fn.__globals__[name], interpret=interpret)
               for name in sorted(_names(fn.__code__)) if is_helper(fn.__globals__.get(name))}
    if not helpers:
        return fn
    # Same code object, so triton reads the same source and line numbers; only the scope differs.
    copy = types.FunctionType(fn.__code__, {**fn.__globals__, **helpers}, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    for attr in ("__kwdefaults__", "__annotations__", "__qualname__", "__doc__", "__module__"):
        setattr(copy, attr, getattr(fn, attr))
    return copy


def wrap(fn, *, interpret: bool):
    """``fn`` (a kernel or a helper) as triton's ``InterpretedFunction`` or ``JITFunction``, cached."""
    cache_key = (fn, interpret, "fn")
    if cache_key not in _CACHE:
        bound = _with_wrapped_helpers(fn, interpret)
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            _CACHE[cache_key] = InterpretedFunction(bound)
        else:
            from triton.runtime.jit import JITFunction

            _CACHE[cache_key] = JITFunction(bound)
    return _CACHE[cache_key]


def kernel(fn, *, configs=None, key=(), restore_value=()):
    """The launchable form of ``fn``: interpreted, compiled, or compiled and autotuned over ``configs``."""
    interp = interpreting()
    if interp or not configs:
        return wrap(fn, interpret=interp)
    # Cached apart from the plain compiled form, which a launch with explicit tiles still needs.
    cache_key = (fn, interp, "autotuned")
    if cache_key not in _CACHE:
        import triton

        _CACHE[cache_key] = triton.autotune(configs=list(configs), key=list(key),
                                            restore_value=list(restore_value))(wrap(fn, interpret=False))
    return _CACHE[cache_key]
