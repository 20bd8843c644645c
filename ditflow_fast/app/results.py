"""What a finished (or running) app run folder holds, read for the page: progress, record, Motion Fidelity,
the reference clip as the run saw it, a zip of the folder, the emb runs whose embeddings can be injected."""

from __future__ import annotations

import json
from pathlib import Path

MOTION_FILE = "app_motion_fidelity.json"


def read_progress(run_dir: Path) -> tuple[int, dict[int, list[float]]]:
    """``(steps done, {timestep: [loss per optimisation iteration]})`` from transfer's saved state."""
    path = Path(run_dir) / "state.safetensors"
    if not path.is_file():
        return 0, {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta.get("next_step", 0)), {int(k): v for k, v in json.loads(meta.get("losses", "{}")).items()}
    except Exception:  # noqa: BLE001 - being replaced, or damaged (transfer itself says so when it runs)
        return -1, {}


def run_record(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def motion_fidelity(run_dir: Path) -> dict | None:
    """Motion Fidelity (``ditflow-fast eval``'s LK form) of the result against the reference at the run's
    size, cached in the run folder; ``{"unavailable": why}`` when it cannot be computed here."""
    from ..atomic import write_json
    from ..viewer import motion

    run_dir = Path(run_dir)
    rec = run_record(run_dir)
    if rec is None:
        return None
    cached = run_dir / MOTION_FILE
    try:
        got = json.loads(cached.read_text())
        if got.get("run_key") == rec.get("run_key"):
            return got
    except (OSError, ValueError):
        pass
    try:
        motion._cv2()
    except motion.TrackerUnavailable as exc:
        return {"unavailable": str(exc)}
    from ..video_io import read_video

    c = rec["config"]
    try:
        ref = read_video(rec["video"], frames=c["frames"], height=c["height"], width=c["width"])
        gen = read_video(rec["result"])
        res = motion.evaluate(ref, gen, tracker="lk")
    except Exception as exc:  # noqa: BLE001 - a score is a by-product: report it, keep the run
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    res["run_key"] = rec.get("run_key")
    write_json(cached, res)
    return res


def reference_clip(run_dir: Path, fps: int = 8) -> str | None:
    """``run_dir/app_reference.mp4``: the reference as the run read it (its frames, its size), for the page."""
    from ..video_io import read_video, write_video

    rec = run_record(run_dir)
    if rec is None:
        return None
    dest = Path(run_dir) / "app_reference.mp4"
    if not dest.is_file():
        c = rec["config"]
        try:
            frames = read_video(rec["video"], frames=c["frames"], height=c["height"], width=c["width"])
        except ValueError:
            return None
        write_video(frames, dest, fmt="mp4", fps=fps)
    return str(dest)


def zip_run(run_dir: Path, out: Path) -> Path:
    """``out/zips/<run>.zip`` of the run folder (rebuilt when the run is newer), written atomically."""
    import zipfile

    from ..atomic import atomic_path

    run_dir, dest = Path(run_dir), Path(out) / "zips" / f"{Path(run_dir).name}.zip"
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file()]
    newest = max((p.stat().st_mtime for p in files), default=0)
    if dest.is_file() and dest.stat().st_mtime >= newest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            z.write(p, Path(run_dir.name) / p.relative_to(run_dir))
    return dest


def emb_runs(out: Path) -> list[tuple[str, str]]:
    """``(label, embeds folder)`` of the finished DiTFlow (emb) runs under ``out/runs``, newest first."""
    found = []
    for d in (Path(out) / "runs").glob("*"):
        rec = run_record(d)
        if rec and rec.get("embeddings") and Path(rec["embeddings"]).is_dir():
            what = rec.get("prompt") or Path(rec.get("prompt_embeds") or "embeddings").name
            found.append((d.stat().st_mtime, f"{d.name}: {what}", rec["embeddings"]))
    return [(label, path) for _, label, path in sorted(found, reverse=True)]
