"""The host memory a run may still take, for the budgets that follow it (the ``cpu`` backend's kept scores, the
app's memory check on a CPU)."""

from __future__ import annotations

import os


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (free pages plus reclaimable cache), else the free pages; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
