"""Peak extra memory of one benchmark case, measured in a fresh process.

``python -m ditflow_fast.cli.memprobe --preset P --impl I --mode M [--dtype D --device cpu]``
builds the case's inputs, records the baseline, runs the case once and prints one JSON line
``{"peak_extra_bytes": ..., "baseline_bytes": ..., "method": ...}``. ``--alloc-mb N`` instead
allocates and fills an N MiB tensor (a calibration of the probe itself).

A fresh process per case, because a process's peak RSS only ever grows: an earlier case (or an
import) would hide a smaller one. On Linux the peak is reset after the inputs are built by writing
``5`` to ``/proc/self/clear_refs``, and read back as ``VmHWM``. On CUDA the allocator's own peak
statistics are exact and need no fresh process (see :func:`cuda_peak_extra`).
"""

from __future__ import annotations

import gc
import resource
import sys
from collections.abc import Callable


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def cpu_peak_extra(run: Callable[[], object]) -> dict:
    """Peak resident bytes during ``run()`` above the resident bytes just before it."""
    gc.collect()
    if _reset_peak() and _status_bytes("VmHWM") is not None:
        base, method = _status_bytes("VmRSS"), "VmHWM after clear_refs, minus VmRSS before the run"
        out = run()
        peak = _status_bytes("VmHWM")
    else:
        # No resettable peak: the earlier peak (imports, input construction) is the baseline, so a
        # run that stays below it reads as 0. Reported as such in "method".
        base, method = _ru_maxrss_bytes(), "ru_maxrss after minus before (lower bound)"
        out = run()
        peak = _ru_maxrss_bytes()
    del out
    return {"peak_extra_bytes": max(0, peak - base), "baseline_bytes": base, "method": method}


def cuda_peak_extra(run: Callable[[], object]) -> dict:
    """Peak allocated CUDA bytes during ``run()`` above those allocated before it."""
    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return {"peak_extra_bytes": max(0, peak - base), "baseline_bytes": base,
            "method": "torch.cuda.max_memory_allocated minus memory_allocated before the run"}
