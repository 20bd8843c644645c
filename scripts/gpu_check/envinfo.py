"""Device, driver and versions for the device check: ``python envinfo.py OUT.json``.

Runs in the environment being checked. Every probe is guarded: a missing package or tool is
recorded as absent, never an error.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys

DISTS = ("torch", "triton", "numpy", "diffusers", "huggingface_hub", "safetensors", "importlib_metadata",
         "accelerate", "xformers", "pytest", "pytest-benchmark", "pykeops", "keopscore", "faiss-gpu", "faiss-gpu-cu12",
         "faiss-cpu", "ditflow-fast")


def _run(cmd: list[str]) -> str | None:
    if not (shutil.which(cmd[0]) or os.access(cmd[0], os.X_OK)):
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for d in DISTS:
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = None
    return out


def info() -> dict:
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    # nvcc on PATH, else the toolkit's usual place (the build step puts its folder on PATH)
    nvcc_path = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)
    nvcc = _run([nvcc_path, "--version"]) if nvcc_path else None
    out = {"python_executable": sys.executable, "versions": versions(), "host": platform.node(),
           "os": platform.platform(), "cpus": os.cpu_count(), "nvidia_smi": smi,
           "driver": smi.split(",")[1].strip() if smi and smi.count(",") >= 2 else None,
           "nvcc": nvcc.splitlines()[-1] if nvcc else None, "nvcc_path": nvcc_path, "device": None,
           "torch_cuda": None}
    try:
        import torch
    except ImportError as exc:
        out["torch_error"] = str(exc)
        return out
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "total_memory_bytes": p.total_memory,
                         "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
    try:
        from ditflow_fast import _native

        out["native"] = {"why_unavailable": _native.why_unavailable(),
                         "cuda_kernels": _native.has_cuda_kernels() if not _native.why_unavailable() else False}
    except Exception as exc:  # the package may not be installed yet
        out["native"] = {"why_unavailable": f"{type(exc).__name__}: {exc}"}
    return out


if __name__ == "__main__":
    data = info()
    text = json.dumps(data, indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            fh.write(text + "\n")
    print(text)
