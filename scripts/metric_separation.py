"""How well Motion Fidelity and the Fréchet Tracking Distance tell same-motion pairs from reversed-motion and
unrelated pairs, on toy-world clips and on the real video files this machine has.

Pairs (reference, other):

- toy world (``toyworld/world.py``; ``--clips`` reference clips of ``--seed``): *same*: another object (kind,
  colour, background) on the same path (start and velocity), what a perfect transfer would draw; *reversed*:
  that object's clip played backwards; *unrelated*: another object with its own random start and velocity;
  *itself* as a sanity row. Scored by the demo's colour tracker (one tracklet: MF, FTD anchored at the first
  frame) and by ``eval``'s Lucas-Kanade grid (MF over all tracks in the released one-directional form and over
  moving tracks; FTD over all paired tracks and over moving reference tracks).
- real clips (``--real FILE ...``; by default gradio's bundled sample videos when gradio is installed: a
  rotating-Earth render and an animated title card, the only non-toy video files here): ``--segments`` cuts
  of ``--frames`` frames from each file at ``--side`` px; *same*: the cut against a copy with another look
  (channels permuted, gamma 0.6, a little noise) and the same motion; *reversed*: that copy played backwards;
  *unrelated*: the cut against cuts of the other files. Scored by ``eval``'s LK grid.

Separation, per metric and per contrast (same against reversed, same against unrelated): the AUC (the
chance that a same pair scores better than the other pair: MF higher, FTD lower; ties count a half) and the
gap between the two means in units of their pooled standard deviation, signed so that positive is the right
way. ``n/a`` where a pair has no score (moving-track forms when a side has no moving track).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/metric_separation.py   # about 40 s here
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from ditflow_fast.toyworld.metrics import frechet_tracking_distance as toy_ftd
from ditflow_fast.toyworld.metrics import motion_fidelity as toy_mf
from ditflow_fast.toyworld.metrics import track_condition
from ditflow_fast.toyworld.world import NUM_CONDITIONS, make_clip, reference_clips
from ditflow_fast.viewer import motion

KINDS = ("itself", "same", "reversed", "unrelated")
# metric -> True when higher is better
TOY_METRICS = {"MF, colour tracker": True, "FTD, colour tracker": False}
GRID_METRICS = {"MF, LK grid, all tracks": True, "MF, LK grid, moving tracks": True,
                "FTD, LK grid, all tracks": False, "FTD, LK grid, moving reference tracks": False}


def _uint8(video: np.ndarray) -> np.ndarray:
    return (np.clip(video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)


def _nan(v):
    return float("nan") if v is None else float(v)


def grid_scores(ref: np.ndarray, other: np.ndarray, grid: int) -> dict:
    """``eval``'s numbers for two uint8 videos of one size and length."""
    r = motion.evaluate(ref, other, grid=grid, max_side=None)
    return {"MF, LK grid, all tracks": _nan(r["motion_fidelity"]),
            "MF, LK grid, moving tracks": _nan(r["moving"]["motion_fidelity"]),
            "FTD, LK grid, all tracks": _nan(r["frechet_tracking_distance"]),
            "FTD, LK grid, moving reference tracks": _nan(r["moving"]["frechet_tracking_distance"])}


def toy_pairs(n: int, seed: int, grid: int) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng([seed, 104729])
    scores = {k: {} for k in KINDS}
    for clip in reference_clips(seed, n):
        cond = (clip.condition + 1 + int(rng.integers(NUM_CONDITIONS - 1))) % NUM_CONDITIONS  # another object
        twin = make_clip(rng, condition=cond, velocity=clip.velocity, start=clip.track[0])
        other = make_clip(rng, condition=cond)
        videos = {"itself": (clip.video, clip.condition), "same": (twin.video, cond),
                  "reversed": (twin.video[::-1].copy(), cond), "unrelated": (other.video, cond)}
        ref_track = track_condition(clip.video, clip.condition)
        for kind, (video, c) in videos.items():
            track = track_condition(video, c)
            row = {"MF, colour tracker": toy_mf(ref_track, track), "FTD, colour tracker": toy_ftd(ref_track, track),
                   **grid_scores(_uint8(clip.video), _uint8(video), grid)}
            for m, v in row.items():
                scores[kind].setdefault(m, []).append(v)
    return scores


def default_real() -> list[Path]:
    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "media_assets" / "videos"
    # b.mp4 and muted_b.mp4 are the start of world.mp4 again: not another motion
    return [p for p in (folder / "world.mp4", folder / "a.mp4") if p.is_file()]


def _other_look(video: np.ndarray, rng) -> np.ndarray:
    """The same frames with another look: channels permuted, gamma 0.6, a little noise; the motion is kept."""
    x = video[..., ::-1].astype(np.float64) / 255.0
    x = x ** 0.6 + rng.normal(0, 0.015, size=x.shape)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def real_cuts(paths: list[Path], segments: int, frames: int, side: int) -> dict[str, list[np.ndarray]]:
    """``segments`` cuts of ``frames`` frames spread over each file, at ``side`` px on the longer side; only the
    frames of the cuts are kept (decoding a whole 1080p file into memory is most of the time otherwise)."""
    import av
    from PIL import Image

    cuts = {}
    for p in paths:
        with av.open(str(p)) as container:
            total = container.streams.video[0].frames or sum(1 for _ in av.open(str(p)).decode(video=0))
        if total < frames:
            cuts[p.name] = []
            continue
        starts = np.linspace(0, total - frames, segments).round().astype(int)
        wanted = {int(a) + i for a in starts for i in range(frames)}
        kept = {}
        with av.open(str(p)) as container:
            for n, frame in enumerate(container.decode(video=0)):
                if n in wanted:
                    img = frame.to_image()
                    s = side / max(img.size)
                    kept[n] = np.asarray(img.resize((max(8, round(img.size[0] * s)), max(8, round(img.size[1] * s))),
                                                    Image.BICUBIC).convert("RGB"))
                if n >= max(wanted):
                    break
        cuts[p.name] = [np.stack([kept[a + i] for i in range(frames)]) for a in starts]
    return cuts


def real_pairs(cuts: dict[str, list[np.ndarray]], grid: int, seed: int) -> dict[str, dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    scores = {k: {} for k in KINDS}
    names = list(cuts)
    for name in names:
        for i, cut in enumerate(cuts[name]):
            look = _other_look(cut, rng)
            others = [c for other in names if other != name for c in cuts[other]
                      if c.shape == cut.shape] or []
            pairs = [("itself", cut), ("same", look), ("reversed", look[::-1].copy())]
            if others:
                pairs.append(("unrelated", others[i % len(others)]))
            for kind, video in pairs:
                for m, v in grid_scores(cut, video, grid).items():
                    scores[kind].setdefault(m, []).append(v)
    return scores


def _auc(good: np.ndarray, bad: np.ndarray, higher: bool) -> float:
    if not good.size or not bad.size:
        return float("nan")
    g, b = (good, bad) if higher else (-good, -bad)
    return float(((g[:, None] > b[None]).sum() + 0.5 * (g[:, None] == b[None]).sum()) / (g.size * b.size))


def _gap(good: np.ndarray, bad: np.ndarray, higher: bool) -> float:
    if good.size < 2 or bad.size < 2:
        return float("nan")
    pooled = np.sqrt((good.var(ddof=1) + bad.var(ddof=1)) / 2)
    d = (good.mean() - bad.mean()) * (1 if higher else -1)
    return float(d / pooled) if pooled > 0 else float("inf") * np.sign(d) if d else 0.0


def separation(scores: dict, metrics: dict[str, bool]) -> list[dict]:
    rows = []
    for m, higher in metrics.items():
        arr = {k: np.asarray(scores[k].get(m, []), np.float64) for k in KINDS}
        fin = {k: a[np.isfinite(a)] for k, a in arr.items()}
        row = {"metric": m + (" (higher is better)" if higher else " (lower is better)")}
        for k in KINDS:
            a = fin[k]
            row[k] = (float(a.mean()), float(a.std()), int(a.size), int(arr[k].size)) if a.size else None
        for other in ("reversed", "unrelated"):
            row[f"auc_{other}"] = _auc(fin["same"], fin[other], higher)
            row[f"gap_{other}"] = _gap(fin["same"], fin[other], higher)
        rows.append(row)
    return rows


def _cell(v) -> str:
    if v is None:
        return "n/a"
    mean, std, n, total = v
    return f"{mean:+.3f} ± {std:.3f}" + ("" if n == total else f" ({n} of {total})")


def _num(v: float, spec: str) -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def table(rows: list[dict]) -> str:
    out = ["| metric | itself | same | reversed | unrelated | AUC same vs reversed | AUC same vs unrelated | "
           "gap same vs reversed (pooled std) | gap same vs unrelated (pooled std) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['metric']} | {_cell(r['itself'])} | {_cell(r['same'])} | {_cell(r['reversed'])} | "
                   f"{_cell(r['unrelated'])} | {_num(r['auc_reversed'], '.2f')} | {_num(r['auc_unrelated'], '.2f')} | "
                   f"{_num(r['gap_reversed'], '+.2f')} | {_num(r['gap_unrelated'], '+.2f')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=24, help="toy-world reference clips")
    p.add_argument("--seed", type=int, default=5, help="toy world: clip seed (not the demo's 0, 1 or 2)")
    p.add_argument("--grid", type=int, default=30, help="LK grid points per side (eval's default)")
    p.add_argument("--real", nargs="*", default=None, help="real video files (default: gradio's bundled samples)")
    p.add_argument("--segments", type=int, default=4, help="real clips: cuts per file")
    p.add_argument("--frames", type=int, default=16, help="real clips: frames per cut")
    p.add_argument("--side", type=int, default=160, help="real clips: longer side in px")
    p.add_argument("--json", default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    toy = separation(toy_pairs(a.clips, a.seed, a.grid), {**TOY_METRICS, **GRID_METRICS})
    print(f"Toy world: {a.clips} reference clips (clip seed {a.seed}), 32 x 32 px, 8 frames; mean ± std per pair "
          "kind.\n")
    print(table(toy))
    real_paths = default_real() if a.real is None else [Path(x) for x in a.real]
    real = None
    if real_paths:
        cuts = real_cuts(real_paths, a.segments, a.frames, a.side)
        real = separation(real_pairs(cuts, a.grid, a.seed), GRID_METRICS)
        print(f"\nReal clips: {', '.join(f'{k} ({len(v)} cuts)' for k, v in cuts.items())}; {a.frames} frames at "
              f"{a.side} px on the longer side; the LK grid only (no colour to track).\n")
        print(table(real))
    else:
        print("\nReal clips: none found (pass --real FILE ...).")
    print(f"\n{time.monotonic() - t0:.0f} s", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps({"toy": toy, "real": real, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
