"""The AMF's geometry: the sizes of one call (:class:`AMFGeometry`) and where its patches sit (:func:`patch_coords`).

Token ``s = y*w + x`` inside a frame sits at ``(x, y)`` in patch units; video tokens are frame-major
after ``text_tokens`` leading text tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class AMFGeometry:
    """What the AMF's cost and output shape depend on, and nothing else (no dtype, device or values).

    The benchmark presets hold one; :attr:`ditflow_fast._problem.AMFProblem.geometry` returns the
    one of a validated call.
    """

    heads: int
    head_dim: int
    frames: int
    height: int
    width: int
    text_tokens: int = 0
    batch: int = 1

    def __post_init__(self):
        for name in ("heads", "head_dim", "frames", "height", "width", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {self.text_tokens}")

    @property
    def patches(self) -> int:
        """Patches per latent frame, ``h*w``."""
        return self.height * self.width

    @property
    def tokens(self) -> int:
        """Video tokens ``N = F*h*w``."""
        return self.frames * self.patches

    @property
    def sequence(self) -> int:
        """Tokens of the attention sequence ``T = text_tokens + N``."""
        return self.text_tokens + self.tokens

    @property
    def concat_dim(self) -> int:
        """Width ``H*d`` of the heads-concatenated vectors whose inner product is the head-mean score."""
        return self.heads * self.head_dim

    @property
    def logit_scale(self) -> float:
        """``1 / (H * sqrt(d))``: the head mean and the attention scale folded into one factor."""
        return 1.0 / (self.heads * math.sqrt(self.head_dim))

    @property
    def qk_shape(self) -> tuple[int, int, int, int]:
        """``[B, H, T, d]``: q's and k's shape in the ``bhtd`` layout."""
        return (self.batch, self.heads, self.sequence, self.head_dim)

    @property
    def out_shape(self) -> tuple[int, int, int, int, int]:
        """``[B, F, F, h*w, 2]``: the AMF's shape."""
        return (self.batch, self.frames, self.frames, self.patches, 2)


def patch_coords(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[h*w, 2]`` tensor of ``(x, y)`` for every patch of one frame, row-major."""
    s = torch.arange(height * width, device=device)
    return torch.stack((s % width, s // width), dim=-1).to(dtype)
