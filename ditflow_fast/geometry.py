"""Patch coordinates: token ``s = y*w + x`` inside a frame sits at ``(x, y)`` in patch units."""

from __future__ import annotations

import torch


def patch_coords(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[h*w, 2]`` tensor of ``(x, y)`` for every patch of one frame, row-major."""
    s = torch.arange(height * width, device=device)
    return torch.stack((s % width, s // width), dim=-1).to(dtype)
