"""A synthetic video world with known motion: textured shapes sliding over textured backgrounds.

Each clip is ``frames`` RGB frames of ``size x size`` pixels (values in [0, 1]) showing one object
of a known *kind* (square, disk, cross) and *colour* moving along a straight line at constant
velocity over a static, low-saturation striped background. The object carries its own texture
(a checker that moves with it), so its appearance has features to follow from frame to frame.

The condition that stands in for the prompt is one integer, ``kind * len(COLOURS) + colour``;
``NULL_CONDITION`` is the empty prompt (used for classifier-free guidance and for the reference
pass of DiTFlow). The ground truth is the object's centre per frame, ``track[f] = start + f * velocity``
in pixel coordinates (x to the right, y down, pixel centres at integer coordinates).

Everything is a pure function of a ``numpy.random.Generator`` (or a seed), so a clip regenerates exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("square", "disk", "cross")
COLOURS = {  # saturated colours far from the grey background, so a colour tracker finds the object
    "red": (0.92, 0.15, 0.12),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.18, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
COLOUR_NAMES = tuple(COLOURS)
NUM_CONDITIONS = len(KINDS) * len(COLOURS)
NULL_CONDITION = NUM_CONDITIONS  # the "empty prompt"
FRAMES, SIZE, RADIUS = 8, 32, 7.0
SPEED_RANGE = (0.75, 2.0)  # pixels per frame; at 2.0 a 7-frame path (14 px) fits the 15 px left to the centre
CHECKER = 4.0  # side (px) of the object's checker cells: a token (4 x 4 px) holds about one cell
_SUPERSAMPLE = 4  # coverage is averaged over 4 x 4 sub-pixels so sub-pixel motion is smooth


@dataclass(frozen=True)
class Clip:
    """One clip: ``video`` ``[F, 3, S, S]`` float32 in [0, 1]; ``track`` ``[F, 2]`` (x, y) object centres;
    ``alpha`` ``[F, S, S]`` the object's coverage of each pixel (None where unknown, e.g. a user's clip)."""

    video: np.ndarray
    condition: int
    kind: int
    colour: int
    track: np.ndarray
    velocity: tuple[float, float]
    alpha: np.ndarray | None = None

    @property
    def name(self) -> str:
        return condition_name(self.condition)


def condition_index(kind: int | str, colour: int | str) -> int:
    k = KINDS.index(kind) if isinstance(kind, str) else int(kind)
    c = COLOUR_NAMES.index(colour) if isinstance(colour, str) else int(colour)
    if not (0 <= k < len(KINDS) and 0 <= c < len(COLOURS)):
        raise ValueError(f"kind {kind!r} / colour {colour!r} out of range")
    return k * len(COLOURS) + c


def condition_parts(condition: int) -> tuple[int, int]:
    """``(kind, colour)`` of a condition index."""
    if not 0 <= condition < NUM_CONDITIONS:
        raise ValueError(f"condition must be in [0, {NUM_CONDITIONS}), got {condition}")
    return divmod(int(condition), len(COLOURS))


def condition_name(condition: int) -> str:
    if condition == NULL_CONDITION:
        return "empty"
    k, c = condition_parts(condition)
    return f"{COLOUR_NAMES[c]} {KINDS[k]}"


def colour_of(condition: int) -> np.ndarray:
    return np.asarray(COLOURS[COLOUR_NAMES[condition_parts(condition)[1]]], np.float32)


def background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """``[3, S, S]``: grey level plus low-contrast sinusoidal stripes at a random angle, slightly tinted."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grey = rng.uniform(0.35, 0.6)
    angle, period, phase = rng.uniform(0, np.pi), rng.uniform(5.0, 11.0), rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period) + phase)
    tint = rng.uniform(-0.04, 0.04, size=3).astype(np.float32)
    bg = grey + 0.08 * stripes[None] + tint[:, None, None]
    return np.clip(bg, 0.0, 1.0).astype(np.float32)


def _shape_coverage(kind: int, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if KINDS[kind] == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if KINDS[kind] == "disk":
        return dx * dx + dy * dy <= radius * radius
    arm = radius / 2.5  # cross: two bars of width 2*arm
    inside = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))


def render_object(kind: int, colour: np.ndarray, centre, size: int = SIZE, radius: float = RADIUS):
    """``(alpha [S, S], rgb [3, S, S])`` of one object centred at ``centre`` (x, y), anti-aliased.

    The object's texture is a checker of ``CHECKER``-px cells in its own frame (it moves with the object)."""
    n = _SUPERSAMPLE
    offs = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    sx = xx[:, :, None, None] + offs[None, None, None, :]
    sy = yy[:, :, None, None] + offs[None, None, :, None]
    dx, dy = sx - centre[0], sy - centre[1]
    cover = _shape_coverage(kind, dx, dy, radius).astype(np.float32)
    checker = ((np.floor((dx + radius) / CHECKER) + np.floor((dy + radius) / CHECKER)) % 2).astype(np.float32)
    shade = (1.0 - 0.25 * checker) * cover
    alpha = cover.mean(axis=(2, 3))
    shade = shade.sum(axis=(2, 3)) / np.maximum(cover.sum(axis=(2, 3)), 1e-6)
    rgb = colour[:, None, None] * shade[None]
    return alpha, rgb


def make_clip(rng: np.random.Generator, *, condition: int | None = None, velocity=None, start=None,
              frames: int = FRAMES, size: int = SIZE, radius: float = RADIUS) -> Clip:
    """One clip; unspecified parts are drawn from ``rng``. ``velocity`` (vx, vy) px/frame, ``start`` (x, y).

    Draws always happen in the same order, so fixing one part does not change the others."""
    cond = int(rng.integers(NUM_CONDITIONS))
    speed, angle = rng.uniform(*SPEED_RANGE), rng.uniform(0, 2 * np.pi)
    u = rng.uniform(0, 1, size=2)
    bg = background(rng, size)
    cond = cond if condition is None else int(condition)
    kind, col = condition_parts(cond)
    v = np.array([speed * np.cos(angle), speed * np.sin(angle)]) if velocity is None else np.asarray(velocity, float)
    lo, hi = radius + 1.0, size - 1.0 - radius - 1.0
    travel = v * (frames - 1)
    span_lo = lo - np.minimum(travel, 0)  # start range that keeps the whole path inside [lo, hi]
    span_hi = hi - np.maximum(travel, 0)
    if np.any(span_hi < span_lo):
        raise ValueError(f"velocity {tuple(v)} is too fast for {frames} frames of {size} px")
    p0 = span_lo + u * (span_hi - span_lo) if start is None else np.asarray(start, float)
    track = (p0[None] + np.arange(frames)[:, None] * v[None]).astype(np.float32)
    video = np.empty((frames, 3, size, size), np.float32)
    alphas = np.empty((frames, size, size), np.float32)
    rgb_col = colour_of(cond)
    for f in range(frames):
        alphas[f], rgb = render_object(kind, rgb_col, track[f], size, radius)
        video[f] = bg * (1 - alphas[f][None]) + rgb * alphas[f][None]
    return Clip(video=video, condition=cond, kind=kind, colour=col, track=track, velocity=(float(v[0]), float(v[1])),
                alpha=alphas)


def make_batch(rng: np.random.Generator, n: int, *, with_alpha: bool = False, **kw):
    """``(videos [n, F, 3, S, S] in [0, 1], conditions [n] int64)`` of random clips, and with ``with_alpha``
    their object coverage ``[n, F, S, S]`` as a third item."""
    clips = [make_clip(rng, **kw) for _ in range(n)]
    out = np.stack([c.video for c in clips]), np.array([c.condition for c in clips], np.int64)
    return (*out, np.stack([c.alpha for c in clips])) if with_alpha else out


def reference_clips(seed: int, n: int, frames: int = FRAMES) -> list[Clip]:
    """``n`` deterministic reference clips for evaluation (drawn from their own seed stream)."""
    rng = np.random.default_rng([seed, 7919])
    return [make_clip(rng, frames=frames) for _ in range(n)]


def first_frame_elsewhere(seed, condition: int, away_from, *, min_distance: float = 8.0) -> Clip:
    """A one-frame clip of ``condition`` (its own background) whose object centre lies at least ``min_distance`` px
    from ``away_from`` (x, y): the given first frame of the image-to-video demo, an object of the same world at
    another place. Deterministic in ``seed``."""
    rng = np.random.default_rng([*np.atleast_1d(seed), 4099])
    for _ in range(1000):
        clip = make_clip(rng, condition=condition, frames=1)
        if np.hypot(*(clip.track[0] - np.asarray(away_from, np.float32))) >= min_distance:
            return clip
    raise ValueError(f"no place {min_distance} px from {tuple(away_from)} in 1000 draws")
