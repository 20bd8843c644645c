"""Input validation for ``compute_amf``: one place that turns raw arguments into a checked problem.

Every backend receives a :class:`AMFProblem`, so no backend repeats these checks and every
error message names the argument that is wrong and what was expected.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import operator
from dataclasses import dataclass

import torch

from .geometry import AMFGeometry

try:
    from numpy import bool_ as np_bool
except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
    np_bool = bool

MODES = ("soft", "argmax")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Device types whose autocast the AMF turns off for itself (see autocast_disabled).
AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "privateuseone")


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

    @functools.cached_property
    def geometry(self) -> AMFGeometry:
        """The call's sizes without its tensors: the same description a benchmark preset holds, and
        where the derived sizes below come from (computed once per problem)."""
        return AMFGeometry(batch=self.batch, heads=self.heads, head_dim=self.head_dim, frames=self.frames,
                           height=self.height, width=self.width, text_tokens=self.text_tokens)

    @property
    def patches(self) -> int:
        """Patches per latent frame, ``h*w``."""
        return self.geometry.patches

    @property
    def tokens(self) -> int:
        """Video tokens ``N = F*h*w``."""
        return self.geometry.tokens

    @property
    def logit_scale(self) -> float:
        """``1 / (H * sqrt(d))``: the head mean and the attention scale folded into one factor."""
        return self.geometry.logit_scale

    @property
    def out_dtype(self) -> torch.dtype:
        # float64 in, float64 out: the only way gradcheck and the oracle can see fp64 precision.
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32

    def out_shape(self) -> tuple[int, ...]:
        shape = (self.frames, self.frames, self.patches, 2)
        return shape if self.squeeze else (self.batch,) + shape


def as_int(name: str, value) -> int:
    """``value`` as a Python int: any integer-like value (``numpy.int64``, a 0-dim integer tensor)
    through ``operator.index``; bools, floats, strings and the rest are a ``TypeError`` naming ``name``."""
    if isinstance(value, (bool, np_bool)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None


def check_scalars(frames, height, width, text_tokens, temperature) -> tuple[int, int, int, int, float]:
    """The geometry as ints and the temperature as a float, each refused by name (shared with distributed_amf)."""
    frames, height, width = (_positive_int(n, v) for n, v in (("frames", frames), ("height", height),
                                                              ("width", width)))
    text_tokens = as_int("text_tokens", text_tokens)
    if text_tokens < 0:
        raise ValueError(f"text_tokens must be an int >= 0, got {text_tokens!r}")
    if isinstance(temperature, (bool, np_bool)) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    try:
        tau = float(temperature)
    except OverflowError:  # an int past float's range
        tau = math.inf
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {tau:g}")
    return frames, height, width, text_tokens, tau


def _positive_int(name: str, value) -> int:
    value = as_int(name, value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def finite_max(t: torch.Tensor) -> float:
    """``max|t|`` (0 for an empty tensor), or NaN when ``t`` holds NaN or inf.

    One ``aminmax`` reduction pass (min and max propagate NaN and reach +-inf), no ``t``-shaped
    bool temporary, and one host sync.
    """
    if t.numel() == 0:
        return 0.0
    with autocast_disabled():  # torch.stack is an autocast "promote" op: under fp16 autocast it refuses bf16
        lo, hi = torch.stack(torch.aminmax(in_memory_order(t.detach()))).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    return max(-lo, hi)


def in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its dimensions permuted into memory order where that makes it contiguous, else ``t``.

    For reductions over every element, whose result does not depend on the order: ``torch.aminmax`` of a
    ``[B, H, T, d]`` view of a ``[B, T, H, d]`` tensor (what diffusers' processors hand over) took 0.89 ms against
    0.27 ms for the same elements in memory order (48 x 1,546 x 64 float32, two threads; session 16).
    """
    if t.is_contiguous():
        return t
    v = t.permute(sorted(range(t.dim()), key=lambda i: -t.stride(i)))
    return v if v.is_contiguous() else t


NON_FINITE = "the AMF of non-finite attention is undefined"


def check_finite(name: str, t: torch.Tensor, what: str = NON_FINITE) -> float:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds NaN or inf; else return ``max|t|``.

    The argmax of a row with a NaN is undefined yet finite-looking, so non-finite input is an
    error rather than something to propagate. Costs one reduction pass over the input (O(N*H*d),
    small next to the O(N^2*H*d) scoring) and one host sync.
    """
    m = finite_max(t)
    if math.isnan(m):
        raise ValueError(f"{name} contains NaN or inf values; {what}")
    return m


def check_maxima(problem: AMFProblem, qmax: float, kmax: float) -> None:
    """Raise ``ValueError`` naming q or k if its ``max|t|`` is NaN (it holds NaN or inf), then if the scores would
    overflow (:func:`check_range`). :func:`check_values` finds the maxima; a backend that ``checks_values`` finds them
    in its own pass over q and k."""
    for name, m in (("q", qmax), ("k", kmax)):
        if math.isnan(m):
            raise ValueError(f"{name} contains NaN or inf values; {NON_FINITE}")
    check_range(problem, qmax, kmax)


def range_limit(dtype: torch.dtype) -> float:
    """Largest score magnitude the backends may form in their accumulation dtype (float32, or float64
    for float64 input): an eighth of its range, which leaves room for Triton's ``log2(e)`` factor and
    for rounding."""
    return torch.finfo(dtype).max / 8


def check_range(problem: AMFProblem, qmax: float, kmax: float) -> None:
    """:func:`check_score_range` for ``problem``'s q, k of largest magnitudes ``qmax``, ``kmax``."""
    check_score_range(problem.q.dtype, problem.heads, problem.head_dim, problem.temperature, problem.mode, qmax, kmax)


def check_score_range(dtype: torch.dtype, heads: int, head_dim: int, temperature: float, mode: str, qmax: float,
                      kmax: float) -> None:
    """Refuse finite q, k (and temperature) whose scores would overflow the accumulation dtype.

    ``|sum_h <q_h[m], k_h[n]>| <= max|q| * max|k| * H * d`` bounds every partial sum of every
    backend's score GEMM (they scale after the sum, or scale q first: both bounded below), and the
    soft logits ``temperature * S`` are that times ``temperature / (H * sqrt(d))``. Past
    :func:`range_limit` the float32 scores would be inf and the result NaN or a wrong argmax, so
    the call is refused (float64 input has float64's range). Costs nothing beyond the finiteness scan.
    """
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    limit = range_limit(out_dtype)
    acc = str(out_dtype).replace("torch.", "")
    raw = qmax * kmax * heads * head_dim  # Python floats: overflow gives inf, never raises
    if not raw <= limit:
        raise ValueError(
            f"q and k are too large for {acc} scores: max|q| * max|k| * H * d = {qmax:.3g} * {kmax:.3g} * "
            f"{heads} * {head_dim} = {raw:.3g} exceeds the limit {limit:.3g}; scale q or k down"
            + ("" if dtype == torch.float64 else " (or pass float64)")
        )
    if mode == "soft":
        alpha = temperature / (heads * math.sqrt(head_dim))  # the geometry's logit_scale
        logits = alpha * max(raw, qmax)  # the logits, and q pre-scaled by alpha (torch backend)
        if not logits <= limit:
            raise ValueError(
                f"temperature={temperature:g} is too large for these q, k: the logits "
                f"temperature * S reach {logits:.3g}, over the {acc} limit {limit:.3g} "
                f"(temperature * max|q| * max|k| * sqrt(d) must stay below it)"
            )


def check_values(problem: AMFProblem) -> None:
    """The value checks of every call (one pass over q and over k): finite, and in range (:func:`check_maxima`)."""
    q, k = problem.q, problem.k
    same = k is q or (k.data_ptr() == q.data_ptr() and k.stride() == q.stride() and k.shape == q.shape)
    qmax = finite_max(q)
    check_maxima(problem, qmax, qmax if same else finite_max(k))


def autocast_disabled() -> contextlib.ExitStack:
    """A context with autocast off on every device type where it is on.

    The AMF's accuracy rests on its own dtypes (fp32 accumulation of bf16/fp16/fp32 input, fp64
    for fp64 input); autocast would run its GEMMs in bf16/fp16 and mix dtypes in the backward.
    The public entry runs every backend's forward inside this context, and every backend's
    backward runs inside it (:func:`no_autocast`): the autograd engine runs a backward with the
    autocast state of the ``.backward()`` call, not the forward's.
    """
    stack = contextlib.ExitStack()
    for device_type in AUTOCAST_DEVICES:
        try:
            enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError:  # a device type this build of torch has no autocast for
            continue
        if enabled:
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def no_autocast(fn):
    """Decorator: run ``fn`` (an autograd Function's ``forward``/``backward``) under :func:`autocast_disabled`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with autocast_disabled():
            return fn(*args, **kwargs)

    return wrapper


LAYOUTS = ("bhtd", "bthd")


def apply_layout(q, k, layout: str):
    """``q, k`` as ``[B, H, T, d]`` (``[H, T, d]``) views: ``layout="bthd"`` takes ``[B, T, H, d]``
    (``[T, H, d]``), Wan's and most non-diffusers models' layout, and transposes without a copy."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "bhtd":
        return q, k
    out = []
    for t in (q, k):
        if isinstance(t, torch.Tensor) and t.dim() in (3, 4):
            t = t.transpose(-3, -2)
        out.append(t)  # anything else is left for validate to refuse
    return tuple(out)


def validate(q, k, *, frames, height, width, temperature, mode, text_tokens, layout="bhtd") -> AMFProblem:
    """Check every argument of :func:`ditflow_fast.compute_amf` but the values of q and k
    (:func:`check_values`), and return the problem with q, k as ``[B, H, T, d]`` views."""
    q, k = apply_layout(q, k, layout)
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            want = "[B, H, T, d] or [H, T, d]" if layout == "bhtd" else "[B, T, H, d] or [T, H, d] (layout='bthd')"
            raise ValueError(f"{name} must be {want}, got {t.dim()} dims with shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if q.shape != k.shape:  # the shapes as given: bthd's are transposed back for the message
        shapes = [tuple(t.shape) if layout == "bhtd" else tuple(t.transpose(-3, -2).shape) for t in (q, k)]
        raise ValueError(f"q and k must have the same shape, got q {shapes[0]} and k {shapes[1]}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {q.dtype} and k {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got q on {q.device} and k on {k.device}")
    frames, height, width, text_tokens, temperature = check_scalars(frames, height, width, text_tokens, temperature)
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
