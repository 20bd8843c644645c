"""``ditflow-fast eval``: Motion Fidelity of a generated video against a reference, as DiTFlow and SMM score it,
and RoPECraft's Fréchet Tracking Distance (FTD).

Tracks on a grid (OpenCV pyramidal Lucas-Kanade by default, offline, no weights; ``--tracker
cotracker`` from the torch hub cache), unit per-frame displacements, the mean over generated tracks of
the best cosine over reference tracks (``motion_fidelity``, the released code's form) and the symmetric
form (``motion_fidelity_symmetric``); the same over moving tracks only. FTD (``frechet_tracking_distance``,
lower is better): the root mean square over paired tracks (the same grid point in both videos) of their
discrete Fréchet distance, in units of the frame's size. Definitions and choices:
``ditflow_fast/viewer/motion.py`` and ``docs/viewer.md``.
"""

from __future__ import annotations

import json
import sys


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="Motion Fidelity and FTD of a generated video against a reference (any two videos)",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--reference", required=True, help="reference video (file or folder of frames)")
    p.add_argument("--generated", required=True, help="generated video (file or folder of frames)")
    p.add_argument("--tracker", default="lk", choices=("lk", "cotracker"),
                   help="lk: OpenCV Lucas-Kanade (default, offline); cotracker: CoTracker3 from the torch hub cache")
    p.add_argument("--grid", type=int, default=None, help="points per side of the tracking grid, 2 to 100 (lk 30, "
                   "cotracker 55)")
    p.add_argument("--frames", type=int, default=None, help="frames compared (default: the shorter video's)")
    p.add_argument("--max-side", type=int, default=512, help="evaluate at most at this longer side (0: as is)")
    p.add_argument("--static-px", type=float, default=0.1,
                   help="a per-frame displacement shorter than this (pixels, 0 to 100) is 'no motion' (no NaN)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_eval)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def _fmt_d(v) -> str:  # a distance: no sign
    return "n/a" if v is None else f"{v:.4f}"


def run_eval(a) -> int:
    from pathlib import Path

    for name in ("reference", "generated"):
        if not Path(getattr(a, name)).exists():
            raise ValueError(f"--{name} {getattr(a, name)}: no such file or folder")
    # grid**2 tracks per video and a grid**2 x grid**2 similarity matrix: 100 is 400 MB, 1000 would be 4 TB
    if a.grid is not None and not 2 <= a.grid <= 100:
        raise ValueError(f"--grid must be from 2 to 100, got {a.grid}")
    if a.frames is not None and a.frames < 2:
        raise ValueError(f"--frames must be at least 2, got {a.frames}")
    if a.max_side < 0:
        raise ValueError(f"--max-side must not be negative, got {a.max_side}")
    if not 0 <= a.static_px <= 100:  # also NaN, which would call every track static and score 1
        raise ValueError(f"--static-px must be a number of pixels from 0 to 100, got {a.static_px}")
    from ..video_io import read_video
    from ..viewer import motion

    if a.tracker == "cotracker":
        why = motion.cotracker_available()
        if why is not None:
            raise motion.TrackerUnavailable(f"--tracker cotracker: {why}. Fetch it once with network access: "
                                            "python -c \"import torch; torch.hub.load('facebookresearch/co-tracker',"
                                            " 'cotracker3_offline')\" (or use the default --tracker lk)")
    else:
        motion._cv2()
    ref = read_video(a.reference, a.frames, option="--reference")  # only the frames compared are decoded
    gen = read_video(a.generated, a.frames, option="--generated")
    res = motion.evaluate(ref, gen, tracker=a.tracker, grid=a.grid, static_px=a.static_px,
                          max_side=a.max_side or None, frames=a.frames)
    res.update(reference=str(a.reference), generated=str(a.generated), reading=motion.READING,
               ftd_reading=motion.FTD_READING)
    if a.json:
        print(json.dumps(res))
        return 0
    m = res["moving"]
    print(f"Motion Fidelity ({a.tracker}, {res['frames']} frames at {res['size'][1]}x{res['size'][0]}, "
          f"{res['reference_tracks']} reference / {res['generated_tracks']} generated tracks)")
    print(f"  motion_fidelity (generated -> reference, the released code's form): {_fmt(res['motion_fidelity'])}")
    print(f"  motion_fidelity_symmetric (the paper's): {_fmt(res['motion_fidelity_symmetric'])}")
    print(f"  moving tracks only ({m['reference_tracks']} reference / {m['generated_tracks']} generated): "
          f"{_fmt(m['motion_fidelity'])}, symmetric {_fmt(m['motion_fidelity_symmetric'])}")
    print(f"  frechet_tracking_distance (RoPECraft's FTD, lower is better): {_fmt_d(res['frechet_tracking_distance'])} "
          f"over {res['ftd_pairs']} paired tracks; moving reference tracks only ({m['ftd_pairs']}): "
          f"{_fmt_d(m['frechet_tracking_distance'])}")
    print(f"  FTD reading: {res['ftd_reading']}")
    print(f"  tracked to the last frame: {res['reference_tracked']:.0%} of the reference's grid points, "
          f"{res['generated_tracked']:.0%} of the generated's")
    print(f"  reading: {res['reading']}")
    for n in res["notes"]:
        print(f"  note: {n}", file=sys.stderr)
    return 0
