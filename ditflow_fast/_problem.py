"""Input validation for ``compute_amf``: one place that turns raw arguments into a checked problem.

Every backend receives a :class:`AMFProblem`, so no backend repeats these checks and every
error message names the argument that is wrong and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODES = ("soft", "argmax")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class AMFProblem:
    """Shapes and options of one AMF call, after validation.

    ``q`` and ``k`` are always 4-D ``[B, H, T, d]`` views of the caller's tensors (no copy);
    ``squeeze`` records that the caller passed ``[H, T, d]`` and wants ``[F, F, h*w, 2]`` back.
    """

    q: torch.Tensor
    k: torch.Tensor
    frames: int
    height: int
    width: int
    temperature: float
    mode: str
    text_tokens: int
    squeeze: bool

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def head_dim(self) -> int:
        return self.q.shape[3]

    @property
    def patches(self) -> int:
        """Patches per latent frame, ``h*w``."""
        return self.height * self.width

    @property
    def tokens(self) -> int:
        """Video tokens ``N = F*h*w``."""
        return self.frames * self.patches

    @property
    def logit_scale(self) -> float:
        """``1 / (H * sqrt(d))``: the head mean and the attention scale folded into one factor."""
        return 1.0 / (self.heads * math.sqrt(self.head_dim))

    @property
    def out_dtype(self) -> torch.dtype:
        # float64 in, float64 out: the only way gradcheck and the oracle can see fp64 precision.
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32

    def out_shape(self) -> tuple[int, ...]:
        shape = (self.frames, self.frames, self.patches, 2)
        return shape if self.squeeze else (self.batch,) + shape


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise if ``t`` holds NaN or inf.

    The argmax of a row with a NaN is undefined yet finite-looking, so non-finite input is an
    error rather than something to propagate. Costs one reduction pass over the input (O(N*H*d),
    small next to the O(N^2*H*d) scoring) and one host sync.
    """
    if t.numel() == 0:
        return
    # min and max propagate NaN and reach +-inf: one reduction pass, no [t.shape] bool temporary.
    lo, hi = torch.aminmax(t)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf values; the AMF of non-finite attention is undefined")


def validate(q, k, *, frames, height, width, temperature, mode, text_tokens) -> AMFProblem:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(
                f"{name} must be [B, H, T, d] or [H, T, d], got {t.dim()} dims with shape {tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got q on {q.device} and k on {k.device}")
    frames = _positive_int("frames", frames)
    height = _positive_int("height", height)
    width = _positive_int("width", width)
    if isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 0:
        raise ValueError(f"text_tokens must be an int >= 0, got {text_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    squeeze = q.dim() == 3
    if squeeze:
        q, k = q.unsqueeze(0), k.unsqueeze(0)
    b, h, t, d = q.shape
    if b < 1 or h < 1 or d < 1:
        raise ValueError(f"q must have non-empty batch, head and head_dim dimensions, got shape {tuple(q.shape)}")
    expected = text_tokens + frames * height * width
    if t != expected:
        raise ValueError(
            f"q/k token dimension T={t} must equal text_tokens + frames*height*width = "
            f"{text_tokens} + {frames}*{height}*{width} = {expected}"
        )
    return AMFProblem(q, k, frames, height, width, float(temperature), mode, text_tokens, squeeze)
