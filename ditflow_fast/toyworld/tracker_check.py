"""The offline tracker checked where the truth is known: toy-world clips, whose motion is exact.

``python -m ditflow_fast.toyworld.tracker_check [--clips N] [--seed S]`` prints, over ``N`` reference clips of
the toy world (``toyworld.world.reference_clips``):

- the Lucas-Kanade tracker's error against the true tracks: a grid point on the object at frame 0 moves
  with the object's velocity, a point the object never covers stays; error in pixels of the 32 px frame,
  over the frames where the point is still tracked; and the share of points kept to the last frame;
- Motion Fidelity (both forms; all tracks and moving tracks only) of each clip against itself, against its
  time reversal and against the next clip (an unrelated motion).

The numbers in ``docs/viewer.md`` come from the default arguments.
"""

from __future__ import annotations

import argparse

import numpy as np


def _uint8(clip) -> np.ndarray:
    return (np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


def track_errors(clip, grid: int = 30) -> dict:
    """Mean error (px) of the lk tracks of ``clip`` against its true point tracks."""
    from ..viewer.motion import track_lk

    v = _uint8(clip)
    t, s = v.shape[0], v.shape[1]
    tracks = track_lk(v, grid=grid)
    p0 = tracks[:, 0]
    xi = np.clip(np.round(p0[:, 0]).astype(int), 0, s - 1)
    yi = np.clip(np.round(p0[:, 1]).astype(int), 0, s - 1)
    on = clip.alpha[0][yi, xi] > 0.99
    never = np.stack([clip.alpha[f][yi, xi] for f in range(t)], 1).max(1) < 0.01
    true = p0[:, None] + np.arange(t)[None, :, None] * np.asarray(clip.velocity)[None, None] * on[:, None, None]
    err = np.linalg.norm(tracks - true, axis=-1)[:, 1:]
    kept = np.isfinite(tracks).all(axis=(1, 2))
    return dict(object_px=float(np.nanmean(err[on])), background_px=float(np.nanmean(err[never])),
                object_points=int(on.sum()), background_points=int(never.sum()), kept=float(kept.mean()))


def run(clips: int = 10, seed: int = 0) -> dict:
    from ..viewer.motion import evaluate
    from .world import reference_clips

    refs = reference_clips(seed, clips)
    errs = [track_errors(c) for c in refs]
    cases = {"itself": [], "time reversal": [], "next clip": []}
    for i, c in enumerate(refs):
        v = _uint8(c)
        others = (("itself", v), ("time reversal", v[::-1].copy()), ("next clip", _uint8(refs[(i + 1) % clips])))
        for name, other in others:
            r = evaluate(v, other)
            cases[name].append([r["motion_fidelity"], r["motion_fidelity_symmetric"],
                                r["moving"]["motion_fidelity"], r["moving"]["motion_fidelity_symmetric"]])
    return dict(tracking={k: float(np.mean([e[k] for e in errs])) for k in errs[0]},
                mf={k: (np.mean(v, 0).tolist(), np.std(v, 0).tolist()) for k, v in cases.items()}, clips=clips,
                seed=seed)


def markdown(res: dict) -> str:
    t = res["tracking"]
    lines = [f"Lucas-Kanade tracker on {res['clips']} toy-world clips (clip seed {res['seed']}, grid 30 x 30, 8 frames "
             "of 32 x 32 px):", "",
             "| points | mean error px | points per clip |", "| --- | --- | --- |",
             f"| on the object at frame 0 | {t['object_px']:.2f} | {t['object_points']:.0f} |",
             f"| background never covered | {t['background_px']:.2f} | {t['background_points']:.0f} |",
             "", f"Points kept to the last frame (forward-backward check): {100 * t['kept']:.0f}%.", "",
             "| generated video | motion_fidelity | motion_fidelity_symmetric | moving tracks: one-directional | "
             "moving tracks: symmetric |", "| --- | --- | --- | --- | --- |"]
    for name, (mean, std) in res["mf"].items():
        cells = " | ".join(f"{m:+.3f} ± {s:.3f}" for m, s in zip(mean, std, strict=True))
        lines.append(f"| the clip's {name} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(markdown(run(a.clips, a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
