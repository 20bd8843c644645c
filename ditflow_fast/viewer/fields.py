"""Numbers about AMF fields that both the images and the page use (kept apart so neither imports the other)."""

from __future__ import annotations

import numpy as np


def field_scale(*amfs: np.ndarray) -> float:
    """The displacement length drawn fully saturated: the 98th percentile of the lengths over the fields
    (a few far jumps of the argmax do not wash out the rest), at least 1 patch; longer ones are darkened."""
    mags = np.concatenate([np.linalg.norm(a, axis=-1).ravel() for a in amfs if a.size] or [np.zeros(1)])
    return max(float(np.percentile(mags, 98)), 1.0)


def pair_errors(ref: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """``[F, F]`` mean end-point error (patches) between two AMFs, per frame pair."""
    return np.linalg.norm(ref - gen, axis=-1).mean(axis=-1)
