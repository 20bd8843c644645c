"""What a benchmark result is keyed by (machine, versions, commit) and where it is appended."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from .memory import meminfo_bytes

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


# The instruction sets that decide which path the CPU kernel takes (csrc/amf_cpu_screen.cpp, amf_cpu_bf16.cpp).
KERNEL_ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def _cpu_model(info: dict[str, str]) -> str:
    """The CPU's model name; where a hypervisor hides the model (a name without a digit, such as "AMD EPYC"),
    its family and model numbers too, so that two generations of one brand do not share a results file."""
    name = info.get("model name") or platform.processor() or platform.machine()
    if not any(c.isdigit() for c in name) and "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def machine_info() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"cpu": _cpu_model(info), "cpu_isa": [f for f in KERNEL_ISA if f in flags], "cores": cores,
            "ram_bytes": meminfo_bytes("MemTotal"), "gpu": gpu, "hostname": platform.node(), "os": platform.platform()}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    from .. import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
            "ditflow_fast": __version__, "numpy": _version("numpy"), "faiss": _version("faiss-cpu"),
            "cuda": torch.version.cuda}


def git_info() -> dict:
    """Commit of the checkout the package runs from; ``dirty`` when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(_REPO_ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_slug(machine: dict) -> str:
    """File-name key of a machine: its GPU, else its CPU model and core count."""
    name = machine["gpu"] or f"{machine['cpu']}-{machine['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_results_path(machine: dict) -> Path:
    """``benchmarks/results/<machine>.jsonl`` of the source checkout (or of the working directory)."""
    base = _REPO_ROOT if (_REPO_ROOT / "benchmarks").is_dir() else Path.cwd()
    return base / "benchmarks" / "results" / f"{machine_slug(machine)}.jsonl"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_record(record: dict, path: Path) -> Path:
    """Append ``record`` as one JSON line to ``path`` (created with its folders), never glued to a torn line."""
    from ..atomic import append_line

    return append_line(path, json.dumps(record, sort_keys=True))


def read_record(path: Path, preset: str | None = None) -> dict:
    """The last record of a results file (of ``preset`` when given), for re-reporting a run without running it."""
    if not path.is_file():
        raise ValueError(f"--from {path}: no such file")
    found = None
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--from {path}: line {number} is not a JSON record ({exc.msg})") from None
            if not isinstance(record, dict) or "rows" not in record or "preset" not in record:
                raise ValueError(f"--from {path}: line {number} is not a benchmark record")
            if preset is None or record["preset"]["name"] == preset:
                found = record
    if found is None:
        raise ValueError(f"--from {path}: no record" + (f" of preset {preset!r}" if preset else ""))
    return found
