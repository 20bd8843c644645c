"""Peak-memory side of the benchmark: predictions, the fit rule, and measurement per case.

The materialising rows (``research``, ``reference``) grow with ``N^2``; before running one, its
predicted peak is compared with the memory this machine has free. A case predicted to need more
than :data:`FIT_FRACTION` of it is not run (a CPU process that runs out of memory takes the
machine down with it); its prediction is reported, labelled ``predicted``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from . import rows
from .cases import CaseSpec, build_case

FIT_FRACTION = 0.6


def predicted_bytes(spec: CaseSpec) -> int | None:
    """Predicted peak extra bytes of a materialising case (its row's prediction); None for the bounded ones.

    research: :func:`ditflow_fast.backends.reference.research_bytes`; reference: the same pattern in float64.
    """
    return rows.get(spec.impl).predicted_bytes(spec)


def meminfo_bytes(field: str) -> int | None:
    """A ``/proc/meminfo`` field (``MemTotal``, ``MemAvailable``...) in bytes; None where there is none."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes(device: str) -> int:
    """Memory free for a new allocation now: MemAvailable on the CPU, free device memory on CUDA."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    avail = meminfo_bytes("MemAvailable")
    return avail if avail is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fit_limit(device: str, override: int | None = None) -> int:
    """Largest predicted peak a case may have and still be run."""
    return int(override) if override is not None else int(FIT_FRACTION * available_bytes(device))


def measure(spec: CaseSpec, timeout_s: float | None = None) -> dict:
    """Peak extra bytes of one run of ``spec``: a fresh subprocess on the CPU, allocator stats on CUDA."""
    if spec.device.startswith("cuda"):
        from .memprobe import cuda_peak_extra

        return cuda_peak_extra(build_case(spec))
    cmd = [sys.executable, "-m", "ditflow_fast.cli.memprobe", "--preset", spec.preset, "--impl", spec.impl,
           "--mode", spec.mode, "--dtype", spec.dtype, "--device", spec.device, "--seed", str(spec.seed),
           "--layout", spec.layout]  # bthd's strided q/k views are another case: the probe must rebuild it
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"memory probe failed (exit {done.returncode}): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
