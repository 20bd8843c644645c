"""Motion fidelity on the toy world: a colour tracker and the Motion Fidelity score.

Tracker: the object of a clip has a known, saturated colour over a grey background, so its
position in each frame is the centroid of the pixels whose chromaticity (``rgb / sum(rgb)``) lies
near the colour's, each pixel weighted by ``1 - distance / radius`` (zero beyond ``radius``).
A frame with too little weight has no position (NaN).

Motion Fidelity (Yatim et al., "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
Transfer", the score DiTFlow reports): for tracklets ``T`` of the reference and ``T~`` of the
generated video, with per-frame displacements ``v_k = tau[k+1] - tau[k]``,

    corr(tau, tau~) = (1 / (F-1)) * sum_k  <v_k, v~_k> / (|v_k| |v~_k|)
    MF = 1/2 * ( 1/|T~| sum_{tau~} max_tau corr(tau, tau~)  +  1/|T| sum_tau max_{tau~} corr(tau, tau~) )

in [-1, 1]. A displacement of length zero (or a frame the tracker lost) contributes a cosine of 0
here; the research code divides by the norm (NaN). DiTFlow's evaluation script keeps only the
first term (generated -> reference) and subtracts 1 from the diagonal of the similarity matrix
(a leftover of a self-similarity code path); ``symmetric=False`` gives that one-sided term, without
the diagonal quirk. With the colour tracker each video has one tracklet (the object's centre), so
MF is the mean cosine between the two centre-displacement sequences.

Fréchet Tracking Distance (RoPECraft's FTD; the definition, and how ``eval`` computes it on grid tracks,
is in :mod:`ditflow_fast.viewer.motion`): the root mean square, over paired tracklets, of their discrete
Fréchet distance in units of the frame's size; 0 for the same path, **lower is better**. RoPECraft tracks
both videos from the same query points, so paired tracks start at the same place; the colour tracker's
centres start wherever each video put its object, so each tracklet is taken relative to its first
position (:func:`anchored`) before the distance: FTD here compares the two objects' paths, not where
they are (a misplaced object, which RoPECraft's tracks would see as still background, is not penalised;
the endpoint error and area ratio columns cover what else can go wrong).
"""

from __future__ import annotations

import numpy as np

from ..viewer.motion import discrete_frechet
from .world import SIZE, colour_of


def colour_weights(video: np.ndarray, colour, *, radius: float = 0.12) -> np.ndarray:
    """``[F, H, W]`` weight of each pixel for ``colour``: ``max(0, 1 - chroma distance / radius)``."""
    video = np.asarray(video, np.float64)
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [F, 3, H, W], got shape {video.shape}")
    colour = np.asarray(colour, np.float64).reshape(3)
    chroma = video / np.maximum(video.sum(axis=1, keepdims=True), 1e-6)
    target = colour / colour.sum()
    dist = np.sqrt(((chroma - target[None, :, None, None]) ** 2).sum(axis=1))  # [F, H, W]
    return np.clip(1.0 - dist / radius, 0.0, None)


def track_colour(video: np.ndarray, colour, *, radius: float = 0.12, min_weight: float = 2.0) -> np.ndarray:
    """Centroid ``[F, 2]`` (x, y) of the pixels near ``colour`` in ``video`` ``[F, 3, H, W]`` (values in [0, 1]).

    ``radius``: chromaticity distance at which a pixel stops counting; ``min_weight``: a frame whose
    total weight is below this (in pixels) has no position (NaN)."""
    w = colour_weights(video, colour, radius=radius)
    h, wd = w.shape[1:]
    yy, xx = np.mgrid[0:h, 0:wd]
    total = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (w * xx).sum(axis=(1, 2)) / total
        cy = (w * yy).sum(axis=(1, 2)) / total
    out = np.stack([cx, cy], axis=-1)
    out[total < min_weight] = np.nan
    return out


def object_area(video: np.ndarray, colour, *, radius: float = 0.12) -> float:
    """Mean per-frame colour weight (pixels) of ``colour``: how much of the frame the object covers.

    A generation whose area is far from the reference's has lost the object or smeared its colour
    (an artefact a trajectory score alone does not see)."""
    return float(colour_weights(video, colour, radius=radius).sum(axis=(1, 2)).mean())


def mask_iou(a: np.ndarray, b: np.ndarray, colour, *, radius: float = 0.12) -> float:
    """IoU of the pixels of ``colour`` (colour weight above one half) in two frames ``[3, H, W]``; NaN when neither
    has any."""
    ma, mb = (colour_weights(np.asarray(x)[None], colour, radius=radius)[0] > 0.5 for x in (a, b))
    union = int((ma | mb).sum())
    return float((ma & mb).sum() / union) if union else float("nan")


def track_condition(video: np.ndarray, condition: int, **kw) -> np.ndarray:
    """Track the object of ``condition`` (its colour) in ``video``: ``[F, 2]``."""
    return track_colour(video, colour_of(condition), **kw)


def _unit_displacements(tracks: np.ndarray) -> np.ndarray:
    d = np.diff(tracks, axis=1)  # [n, F-1, 2]
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    ok = np.isfinite(norm) & (norm > 1e-8)
    return np.where(ok, d / np.where(ok, norm, 1.0), 0.0)


def tracklet_similarity(reference: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """``corr`` of every (reference, generated) pair: ``[n_ref, n_gen]``; tracks ``[n, F, 2]``
    (a single ``[F, 2]`` track is taken as one tracklet). Frame counts must match."""
    ref, gen = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    ref, gen = (ref[None] if ref.ndim == 2 else ref), (gen[None] if gen.ndim == 2 else gen)
    if ref.ndim != 3 or gen.ndim != 3 or ref.shape[2] != 2 or gen.shape[2] != 2:
        raise ValueError(f"tracks must be [n, F, 2] or [F, 2], got {reference.shape} and {generated.shape}")
    if ref.shape[1] != gen.shape[1] or ref.shape[1] < 2:
        raise ValueError(f"tracks need the same number (>= 2) of frames, got {ref.shape[1]} and {gen.shape[1]}")
    a, b = _unit_displacements(ref), _unit_displacements(gen)
    return np.einsum("nkc,mkc->nm", a, b) / a.shape[1]


def motion_fidelity(reference: np.ndarray, generated: np.ndarray, *, symmetric: bool = True) -> float:
    """Motion Fidelity of generated tracklets against reference tracklets (see the module docstring)."""
    sim = tracklet_similarity(reference, generated)
    gen_to_ref = sim.max(axis=0).mean()
    if not symmetric:
        return float(gen_to_ref)
    return float(0.5 * (gen_to_ref + sim.max(axis=1).mean()))


def endpoint_error(reference: np.ndarray, generated: np.ndarray) -> float:
    """Mean distance (px) between the two tracks' displacements from their first frame (NaN frames skipped)."""
    ref, gen = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    err = np.linalg.norm((gen - gen[:1]) - (ref - ref[:1]), axis=-1)[1:]
    return float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")


def anchored(tracks: np.ndarray) -> np.ndarray:
    """Tracklets ``[n, F, 2]`` (or one ``[F, 2]``) relative to their first found position, frames the tracker
    lost filled with the last found position (the first found one before it); NaN for a tracklet never found."""
    t = np.array(tracks, np.float64)
    one = t.ndim == 2
    t = t[None] if one else t
    for tr in t:
        ok = np.isfinite(tr).all(axis=1)
        if not ok.any():
            tr[:] = np.nan
            continue
        idx = np.maximum.accumulate(np.where(ok, np.arange(len(tr)), -1))  # last found frame, -1 before the first
        tr[:] = tr[np.where(idx < 0, np.argmax(ok), idx)]
        tr -= tr[0].copy()
    return t[0] if one else t


def frechet_tracking_distance(reference: np.ndarray, generated: np.ndarray, *, size: float = SIZE) -> float:
    """FTD (module docstring) of generated tracklets against reference tracklets, paired by index (``[n, F, 2]``,
    or one ``[F, 2]`` each), each anchored at its first position, in units of the frame's side ``size``
    (px). NaN when a tracklet was never found. Lower is better; symmetric in its two arguments."""
    ref, gen = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    ref, gen = (ref[None] if ref.ndim == 2 else ref), (gen[None] if gen.ndim == 2 else gen)
    if ref.ndim != 3 or ref.shape != gen.shape or ref.shape[2] != 2 or ref.shape[1] < 1:
        raise ValueError(f"tracks must be paired [n, F, 2] or [F, 2] of one shape, got {np.shape(reference)} and "
                         f"{np.shape(generated)}")
    if not size > 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    a, b = anchored(ref) / size, anchored(gen) / size
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return float(np.sqrt(np.mean(discrete_frechet(a, b) ** 2)))
