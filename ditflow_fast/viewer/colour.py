"""The flow colour wheel: hue gives the direction, saturation the magnitude (white: no motion).

The wheel is the one of the optical-flow literature (Baker et al.'s Middlebury colour code): 55
colours around the circle in six ramps (red, yellow, green, cyan, blue, magenta), red for motion to
the right and orange-yellow for motion down (image coordinates, y down), green-cyan to the left,
blue-violet up. A displacement of length ``r`` relative to ``scale`` is the wheel's colour blended
with white by ``min(r / scale, 1)``. ``page.py`` carries the same table and formula in JavaScript,
so the PNG and the page draw the same colours (tested).
"""

from __future__ import annotations

import numpy as np

RAMPS = (15, 6, 4, 11, 13, 6)  # red->yellow, yellow->green, green->cyan, cyan->blue, blue->magenta, magenta->red


def wheel() -> np.ndarray:
    """``[55, 3]`` float in [0, 1]: the colours around the circle."""
    ry, yg, gc, cb, bm, mr = RAMPS
    cols = []
    cols += [(1.0, i / ry, 0.0) for i in range(ry)]
    cols += [(1.0 - i / yg, 1.0, 0.0) for i in range(yg)]
    cols += [(0.0, 1.0, i / gc) for i in range(gc)]
    cols += [(0.0, 1.0 - i / cb, 1.0) for i in range(cb)]
    cols += [(i / bm, 0.0, 1.0) for i in range(bm)]
    cols += [(1.0, 0.0, 1.0 - i / mr) for i in range(mr)]
    return np.asarray(cols, np.float64)


def flow_to_rgb(dx: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """``[..., 3]`` uint8 colours of displacements ``(dx, dy)`` (any shape, y down); ``scale``: the length
    drawn fully saturated (longer ones are darkened a little, as the Middlebury code does)."""
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    cw = wheel()
    n = len(cw)
    rad = np.sqrt(dx * dx + dy * dy) / (scale if scale > 0 else 1.0)
    a = np.arctan2(-dy, -dx) / np.pi  # in [-1, 1]
    fk = (a + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(fk).astype(int) % n
    k1 = (k0 + 1) % n
    f = (fk - np.floor(fk))[..., None]
    col = (1 - f) * cw[k0] + f * cw[k1]
    r = rad[..., None]
    col = np.where(r <= 1, 1 - r * (1 - col), col * 0.75)
    return np.clip(np.floor(255 * col + 0.5), 0, 255).astype(np.uint8)


def legend(size: int = 96) -> np.ndarray:
    """``[size, size, 4]`` uint8 RGBA disc of the wheel (centre: no motion, rim: ``scale``)."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = (xx - c) / c, (yy - c) / c
    rgb = flow_to_rgb(dx, dy, 1.0)
    alpha = np.where(dx * dx + dy * dy <= 1.0, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)
