"""Motion Fidelity of any two videos, as DiTFlow and SMM define it, and RoPECraft's Fréchet Tracking
Distance, with an offline tracker.

Motion Fidelity (Yatim et al., "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
Transfer"; the score DiTFlow reports): points on a grid are tracked through each video; for a track
``tau`` its per-frame displacements ``v_k = tau[k+1] - tau[k]`` are normalised to unit length, and

    corr(tau, tau~) = (1 / (T-1)) * sum_k <v_k / |v_k|, v~_k / |v~_k|>
    one-directional (DiTFlow's released eval/motion_fidelity_score.py): mean over generated tracks tau~
        of max over reference tracks tau of corr(tau, tau~)         -> ``motion_fidelity``
    symmetric (the paper's): the mean of that and the same with the roles swapped
                                                                     -> ``motion_fidelity_symmetric``

Two places where the released code is undefined or odd, and what is done here instead:

- **Zero motion.** The released code divides by ``|v_k|``: a point that does not move in a frame gives
  NaN, and so does the whole score. Here a displacement shorter than ``static_px`` pixels is "no
  motion", represented by a third unit axis: its cosine is 1 with another "no motion" and 0 with any
  motion. So a static background matches a static background (a clip against itself scores 1) and
  nothing is NaN. A frame a tracker lost contributes 0.
- **The diagonal.** The released ``get_score`` subtracts the identity from the similarity matrix (a
  leftover of comparing a video with itself), which changes the score by up to ``1/N`` only when the
  two track sets happen to share an index; it is not reproduced.

Because a grid covers the background too, the all-tracks score is dominated by how much of the frame
is static; :func:`motion_fidelity` also reports the same two forms over the *moving* tracks only (a track
that moves in at least half of its frames, in its own video), which is what a reader usually wants
to know about the motion of the object. ``None`` (printed ``n/a``) when a side has no moving track.

Fréchet Tracking Distance (RoPECraft, Gökmen et al., "RoPECraft: Training-Free Motion Transfer with
Trajectory-Guided RoPE Optimization on Diffusion Transformers"; its released ``ftd.py`` calls it the
Fréchet trajectory distance): both videos are tracked from the *same* query points of the first frame,
so track ``i`` of one is paired with track ``i`` of the other; coordinates are divided by the frame's
width and height; each pair's discrete Fréchet distance (Eiter and Mannila: the shortest leash with
which two walkers traverse the two polylines monotonically) is taken, and

    FTD = sqrt( mean over pairs of frechet(tau_i, tau~_i) ** 2 )

0 for identical tracks, growing with any difference of path, in units of the frame's size; **lower is
better**. Unlike Motion Fidelity it sees speed and position, not only direction, and a static
background adds zeros to the mean rather than agreement to a max. The released code fills a point
occluded mid-clip from its nearest visible neighbour and drops points lost for good; with LK a lost
point is lost for good, so a pair counts only when both tracks reach the last frame. It samples
query points from an object mask; :func:`frechet_tracking_distance` reports all pairs and, as the
mask's analogue, the pairs whose reference track moves.

Trackers (:func:`track`):

- ``lk`` (default, offline, no weights): OpenCV's pyramidal Lucas-Kanade from a grid on the first frame,
  frame to frame, with a forward-backward check (a point whose backward track misses its start by more
  than ``fb_px`` is lost from then on; lost points are NaN). Frames smaller than 128 px are upscaled for
  the pyramid. Only the tracks kept to the last frame are scored (CoTracker's are all complete); the
  result says how many of the grid's points that is. Needs ``opencv-python-headless`` (the ``eval`` extra).
- ``cotracker``: CoTracker3 offline, ``grid_size=55`` as in DiTFlow's eval script, from the torch hub cache
  (``torch.hub.get_dir()``); a clear error when it is not there (nothing is downloaded unless the
  caller allows it).
"""

from __future__ import annotations

import math

import numpy as np

TRACKERS = ("lk", "cotracker")
# what ``eval`` prints under its scores (and puts in its JSON): the number alone separates little
# and under its FTD
FTD_READING = ("0 = the same tracks; in units of the frame's size (0.1 = a tenth of the frame); lower is better; "
               "unlike Motion Fidelity it sees speed and where the motion happens, and static background adds zeros")
READING = ("1 = the same motion at every track, 0 = unrelated directions, < 0 = opposite; static background "
           "counts as agreement, so two unrelated clips often score ~0.85 over all tracks (a clip against itself "
           "1.0): compare with a baseline (the reference against an unrelated clip), read the moving-tracks score "
           "for the object's motion, and trust both less when few points are tracked to the last frame")


class TrackerUnavailable(ValueError):
    """The asked-for tracker cannot run here (a missing package or checkpoint); the message says what to do."""


# -- trackers ------------------------------------------------------------------------------------------
def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise TrackerUnavailable("the lk tracker needs OpenCV: pip install -e '.[eval]' in the checkout (or "
                                 f"opencv-python-headless) ({exc})") from None
    return cv2


def grid_points(height: int, width: int, grid: int) -> np.ndarray:
    """``[grid*grid, 2]`` (x, y) cell centres of a ``grid x grid`` grid over the frame."""
    xs = (np.arange(grid) + 0.5) * width / grid - 0.5
    ys = (np.arange(grid) + 0.5) * height / grid - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=-1).astype(np.float32)


def track_lk(video: np.ndarray, *, grid: int = 30, fb_px: float | None = None, points: np.ndarray | None = None,
             min_side: int = 128, min_eig: float = 1e-5) -> np.ndarray:
    """Tracks ``[N, T, 2]`` (x, y in pixels of ``video``; NaN once lost) of grid points (or ``points``)
    through ``video`` uint8 ``[T, H, W, 3]`` with pyramidal Lucas-Kanade and a forward-backward check."""
    cv2 = _cv2()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
    t, h, w, _ = video.shape
    up = max(1, math.ceil(min_side / min(h, w)))
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video]
    if up > 1:
        grey = [cv2.resize(g, (w * up, h * up), interpolation=cv2.INTER_CUBIC) for g in grey]
    side = min(h, w) * up
    win = int(np.clip(side // 6, 9, 31)) | 1
    levels = int(np.clip(math.log2(max(side, 32) / 32), 1, 4))
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 0.01)
    fb = (0.02 * side if fb_px is None else fb_px * up)  # in the upscaled frame's pixels
    p0 = grid_points(h, w, grid) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    cur = ((p0 + 0.5) * up - 0.5).astype(np.float32)
    out = np.full((len(cur), t, 2), np.nan, np.float32)
    out[:, 0] = cur
    alive = np.ones(len(cur), bool)
    for k in range(t - 1):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        pts = cur[idx].reshape(-1, 1, 2)
        kw = dict(winSize=(win, win), maxLevel=levels, criteria=crit, minEigThreshold=min_eig)
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(grey[k], grey[k + 1], pts, None, **kw)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(grey[k + 1], grey[k], nxt, None, **kw)
        err = np.linalg.norm(back.reshape(-1, 2) - pts.reshape(-1, 2), axis=-1)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (err <= fb) & np.isfinite(nxt.reshape(-1, 2)).all(axis=1)
        nxt = nxt.reshape(-1, 2)
        cur[idx[ok]] = nxt[ok]
        alive[idx[~ok]] = False
        out[idx[ok], k + 1] = nxt[ok]
    out = (out + 0.5) / up - 0.5
    return out


def cotracker_available() -> str | None:
    """None when CoTracker3 can be loaded from the torch hub cache, else why not."""
    import os

    import torch

    repo = os.path.join(torch.hub.get_dir(), "facebookresearch_co-tracker_main")
    ckpt = os.path.join(torch.hub.get_dir(), "checkpoints", "scaled_offline.pth")
    if not os.path.isdir(repo):
        return f"CoTracker's code is not in the torch hub cache ({repo})"
    if not os.path.isfile(ckpt):
        return f"CoTracker3's offline checkpoint is not in the torch hub cache ({ckpt})"
    return None


def track_cotracker(video: np.ndarray, *, grid: int = 55, device=None) -> np.ndarray:
    """Tracks ``[N, T, 2]`` from CoTracker3 offline (``grid_size=grid``), loaded from the torch hub cache only."""
    import os

    import torch

    why = cotracker_available()
    if why is not None:
        raise TrackerUnavailable(f"--tracker cotracker: {why}. Fetch it once with network access: python -c "
                                 "\"import torch; torch.hub.load('facebookresearch/co-tracker', 'cotracker3_offline')\""
                                 " (or use the default --tracker lk)")
    repo = os.path.join(torch.hub.get_dir(), "facebookresearch_co-tracker_main")
    try:
        model = torch.hub.load(repo, "cotracker3_offline", source="local")
    except Exception as exc:  # noqa: BLE001 - the hub's errors come in many types
        raise TrackerUnavailable(f"--tracker cotracker: loading it from {repo} failed ({type(exc).__name__}: "
                                 f"{exc})") from None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)[None].float().to(device)
    with torch.no_grad():
        tracks, _ = model(x, grid_size=grid)
    return tracks[0].permute(1, 0, 2).float().cpu().numpy()


def track(video: np.ndarray, tracker: str = "lk", *, grid: int | None = None, **kw) -> np.ndarray:
    if tracker == "lk":
        return track_lk(video, grid=grid or 30, **kw)
    if tracker == "cotracker":
        return track_cotracker(video, grid=grid or 55, **kw)
    raise ValueError(f"--tracker must be one of {', '.join(TRACKERS)}, got {tracker!r}")


# -- Motion Fidelity ---------------------------------------------------------------------------------
def unit_displacements(tracks: np.ndarray, static_px: float = 0.1) -> np.ndarray:
    """``[N, T-1, 3]``: unit displacement ``(dx, dy, 0)``, ``(0, 0, 1)`` for "no motion" (shorter than
    ``static_px``), zeros where the tracker lost the point."""
    tracks = np.asarray(tracks, np.float64)
    d = np.diff(tracks, axis=1)
    n = np.linalg.norm(d, axis=-1)
    valid = np.isfinite(n)
    moving = valid & (n >= static_px) & (n > 0)  # static_px 0: a zero step is still "no motion", not 0/0
    out = np.zeros(d.shape[:2] + (3,))
    safe = np.where(moving, n, 1.0)[..., None]
    out[..., :2] = np.where(moving[..., None], np.nan_to_num(d) / safe, 0.0)
    out[..., 2] = (valid & ~moving).astype(float)
    return out


def similarity(generated: np.ndarray, reference: np.ndarray, static_px: float = 0.1) -> np.ndarray:
    """``[N_gen, N_ref]`` mean per-frame cosine of every (generated, reference) pair of tracks."""
    if generated.shape[1] != reference.shape[1] or generated.shape[1] < 2:
        raise ValueError(f"tracks need the same number (>= 2) of frames, got {generated.shape[1]} and "
                         f"{reference.shape[1]}")
    a = unit_displacements(generated, static_px).astype(np.float32)
    b = unit_displacements(reference, static_px).astype(np.float32)
    steps = a.shape[1]
    return (a.reshape(len(a), steps * 3) @ b.reshape(len(b), steps * 3).T) / steps


def moving_tracks(tracks: np.ndarray, static_px: float = 0.1) -> np.ndarray:
    """Boolean ``[N]``: tracks that move (at least ``static_px`` per frame) in at least half their valid frames."""
    n = np.linalg.norm(np.diff(np.asarray(tracks, np.float64), axis=1), axis=-1)
    valid = np.isfinite(n)
    moving = (valid & (n >= static_px) & (n > 0)).sum(axis=1)
    return (valid.sum(axis=1) > 0) & (moving * 2 >= np.maximum(valid.sum(axis=1), 1))


def _scores(sim: np.ndarray) -> tuple[float | None, float | None]:
    if sim.size == 0:
        return None, None
    one = float(sim.max(axis=1).mean())
    return one, float(0.5 * (one + sim.max(axis=0).mean()))


def motion_fidelity(reference_tracks: np.ndarray, generated_tracks: np.ndarray, *, static_px: float = 0.1) -> dict:
    """Both forms over all tracks and over the moving tracks only (see the module docstring)."""
    ref, gen = np.asarray(reference_tracks), np.asarray(generated_tracks)
    t = min(ref.shape[1], gen.shape[1])
    ref, gen = ref[:, :t], gen[:, :t]
    n_ref, n_gen = len(ref), len(gen)
    ref, gen = ref[np.isfinite(ref).all(axis=(1, 2))], gen[np.isfinite(gen).all(axis=(1, 2))]  # kept to the end
    one, sym = _scores(similarity(gen, ref, static_px))
    mr, mg = moving_tracks(ref, static_px), moving_tracks(gen, static_px)
    if mr.any() and mg.any():
        sim_m = similarity(gen[mg], ref[mr], static_px)
        m_one, m_sym = _scores(sim_m)
    else:
        m_one = m_sym = None
    return {"motion_fidelity": one, "motion_fidelity_symmetric": sym,
            "moving": {"motion_fidelity": m_one, "motion_fidelity_symmetric": m_sym,
                       "reference_tracks": int(mr.sum()), "generated_tracks": int(mg.sum())},
            "reference_tracks": int(len(ref)), "generated_tracks": int(len(gen)), "frames": int(t),
            "reference_points": int(n_ref), "generated_points": int(n_gen),
            "static_px": static_px}


# -- Fréchet Tracking Distance ------------------------------------------------------------------------
def discrete_frechet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Discrete Fréchet distance of each pair of polylines ``a[i]``, ``b[i]`` (``[N, T, D]``, or one ``[T, D]``
    pair, which gives a 0-d array); the lengths ``T`` may differ. Eiter and Mannila's recursion: the
    coupling cost ``c(p, q) = max(d(p, q), min(c(p-1, q), c(p-1, q-1), c(p, q-1)))``, vectorised over pairs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    single = a.ndim == 2
    a, b = (a[None], b[None]) if single else (a, b)
    if a.ndim != 3 or b.ndim != 3 or len(a) != len(b) or a.shape[2] != b.shape[2] or not a.shape[1] or not b.shape[1]:
        raise ValueError(f"polylines must be [N, T, D] pairs (or [T, D]) with T >= 1, got {a.shape} and {b.shape}")
    d = np.linalg.norm(a[:, :, None] - b[:, None, :], axis=-1)  # [N, Ta, Tb]
    c = np.empty_like(d)
    for p in range(d.shape[1]):
        for q in range(d.shape[2]):
            if p == 0 and q == 0:
                prev = np.zeros(len(d))
            elif p == 0:
                prev = c[:, 0, q - 1]
            elif q == 0:
                prev = c[:, p - 1, 0]
            else:
                prev = np.minimum(np.minimum(c[:, p - 1, q], c[:, p - 1, q - 1]), c[:, p, q - 1])
            c[:, p, q] = np.maximum(d[:, p, q], prev)
    out = c[:, -1, -1]
    return out[0] if single else out


def _rms(x: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else None


def frechet_tracking_distance(reference_tracks: np.ndarray, generated_tracks: np.ndarray, *, width: float,
                              height: float, static_px: float = 0.1) -> dict:
    """RoPECraft's FTD (module docstring) of tracks ``[N, T, 2]`` (x, y px) started from the same query points
    in both videos, so paired by index. Only pairs whose two tracks reach the last frame count. Returns
    ``{"ftd", "pairs", "moving": {"ftd", "pairs"}}``; ``ftd`` is ``None`` where no pair is left; ``moving``:
    the pairs whose reference track moves (:func:`moving_tracks`), the analogue of RoPECraft's object mask."""
    ref, gen = np.asarray(reference_tracks, np.float64), np.asarray(generated_tracks, np.float64)
    if ref.ndim != 3 or gen.ndim != 3 or ref.shape[2] != 2 or gen.shape[2] != 2 or gen.shape[0] != ref.shape[0]:
        raise ValueError(f"FTD pairs tracks by index: both must be [N, T, 2] with the same N, got {ref.shape} "
                         f"and {gen.shape}")
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be positive pixels, got {width} and {height}")
    t = min(ref.shape[1], gen.shape[1])
    ref, gen = ref[:, :t], gen[:, :t]
    keep = np.isfinite(ref).all(axis=(1, 2)) & np.isfinite(gen).all(axis=(1, 2))
    scale = np.array([width, height], np.float64)
    fd = discrete_frechet(ref[keep] / scale, gen[keep] / scale) if keep.any() else np.zeros(0)
    moving = moving_tracks(ref[keep], static_px) if keep.any() else np.zeros(0, bool)
    return {"ftd": _rms(fd), "pairs": int(keep.sum()),
            "moving": {"ftd": _rms(fd[moving]), "pairs": int(moving.sum())}}


# -- videos --------------------------------------------------------------------------------------------
def _resize(video: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if video.shape[1:3] == (height, width):
        return video
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in video])


def align(reference: np.ndarray, generated: np.ndarray, *, max_side: int | None = 512,
          frames: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both videos at one size (the reference's, shrunk so its longer side is at most ``max_side``) and one
    frame count (the shorter one's, or ``frames``), and notes saying what was changed."""
    notes = []
    t = min(len(reference), len(generated))
    if frames is not None:
        if frames > t:
            raise ValueError(f"--frames {frames}: the videos have {len(reference)} and {len(generated)} frames")
        t = frames
    elif len(reference) != len(generated):
        notes.append(f"frame counts differ ({len(reference)} reference, {len(generated)} generated): the first {t} "
                     "of each are compared")
    if t < 2:
        raise ValueError(f"Motion Fidelity needs at least 2 frames, got {t}")
    h, w = reference.shape[1:3]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        h, w = max(8, round(h * s)), max(8, round(w * s))
        notes.append(f"evaluated at {w}x{h} (longer side {max_side})")
    if generated.shape[1:3] != reference.shape[1:3]:
        gh, gw = generated.shape[1:3]
        if abs(gw / gh - reference.shape[2] / reference.shape[1]) > 0.02:
            notes.append(f"aspect ratios differ ({gw}x{gh} generated, {reference.shape[2]}x{reference.shape[1]} "
                         "reference): the generated video is stretched to the reference's")
        notes.append(f"generated video resized from {gw}x{gh} to {w}x{h}")
    return _resize(reference[:t], h, w), _resize(generated[:t], h, w), notes


def evaluate(reference: np.ndarray, generated: np.ndarray, *, tracker: str = "lk", grid: int | None = None,
             static_px: float = 0.1, max_side: int | None = 512, frames: int | None = None) -> dict:
    """Motion Fidelity and FTD of two uint8 ``[T, H, W, 3]`` videos (see :func:`motion_fidelity`,
    :func:`frechet_tracking_distance`, :func:`align`)."""
    ref, gen, notes = align(reference, generated, max_side=max_side, frames=frames)
    tr = track(ref, tracker, grid=grid)
    tg = track(gen, tracker, grid=grid)
    res = motion_fidelity(tr, tg, static_px=static_px)
    # both videos were tracked from one grid at one size, so track i of each started at the same point
    ftd = frechet_tracking_distance(tr, tg, width=ref.shape[2], height=ref.shape[1], static_px=static_px)
    res["frechet_tracking_distance"], res["ftd_pairs"] = ftd["ftd"], ftd["pairs"]
    res["moving"].update(frechet_tracking_distance=ftd["moving"]["ftd"], ftd_pairs=ftd["moving"]["pairs"])
    res.update(tracker=tracker, size=[int(ref.shape[1]), int(ref.shape[2])], notes=notes,
               reference_tracked=float(np.isfinite(tr[:, -1, 0]).mean()),
               generated_tracked=float(np.isfinite(tg[:, -1, 0]).mean()))
    return res
