"""Video in and out: an mp4 (any container FFmpeg reads, through PyAV) or a folder of frames.

Frames travel as ``uint8`` arrays ``[F, H, W, 3]`` (RGB). Outputs are written atomically through
:mod:`ditflow_fast.atomic` (a temporary name in the destination folder, then renamed), so an
interrupted or failing run never leaves a half-written video under the final name, and what is
written gets the umask's usual modes (0644 files, 0755 folders under umask 022).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .atomic import atomic_dir, atomic_path

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class VideoError(ValueError):
    """A video that is missing, unreadable, too short, or of an unusable size."""


def _natural_key(p: Path):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def _read_container(path: Path, limit: int | None, option: str = "--video") -> list[np.ndarray]:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a declared dependency
        raise VideoError("reading video files needs PyAV: pip install av") from exc
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{option} {path}: the file has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if limit is not None and len(frames) >= limit:
                    break
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises its own error family for corrupt or non-video files
        raise VideoError(f"{option} {path}: cannot decode it as a video ({type(exc).__name__}: {exc})") from exc
    return frames


def _read_folder(path: Path, limit: int | None, option: str = "--video") -> list[np.ndarray]:
    from PIL import Image

    files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
    if not files:
        raise VideoError(f"{option} {path}: the folder holds no frames ({', '.join(FRAME_SUFFIXES)})")
    frames = []
    for p in files[:limit]:
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except Exception as exc:
            raise VideoError(f"{option} {path}: cannot read frame {p.name} ({exc})") from exc
    return frames


def read_video(path, frames: int | None = None, height: int | None = None, width: int | None = None, *,
               option: str = "--video") -> np.ndarray:
    """The first ``frames`` frames of a video file or frame folder, resized to ``height x width``.

    Returns ``uint8 [F, H, W, 3]``. Raises :class:`VideoError` for a missing or unreadable input,
    or one with fewer than ``frames`` frames; its message starts with ``option`` (the command-line
    option the path came from) and the path.
    """
    got = _read_frames(path, frames, option)
    if len({f.shape for f in got}) != 1 and (height is None or width is None):
        sizes = " and ".join(sorted({f"{f.shape[1]}x{f.shape[0]}" for f in got})[:2])
        raise VideoError(f"{option} {Path(path)}: frames differ in size ({sizes}, width x height); a video's frames "
                         "must share one size")
    return _resized(got, height, width)


def _resized(got, height: int | None, width: int | None) -> np.ndarray:
    from PIL import Image

    if height is not None and width is not None:
        got = [f if f.shape[:2] == (height, width) else
               np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in got]
    return np.stack(got)


def frames_from_array(video, frames: int | None = None, height: int | None = None, width: int | None = None, *,
                      option: str = "video") -> np.ndarray:
    """What :func:`read_video` gives for a file, from frames in memory: numpy or torch ``uint8 [F, H, W, 3]``."""
    video = _rgb_array(video, 4, option, "a path, or frames as a numpy array or tensor", "frames must be uint8 "
                       "[F, H, W, 3]")
    if frames is not None and video.shape[0] < frames:
        raise VideoError(f"{option}: has {video.shape[0]} frames, fewer than the {frames} asked for (frames)")
    return _resized(list(video[:frames]), height, width)


def read_image(image, height: int | None = None, width: int | None = None, *, option: str = "--image") -> np.ndarray:
    """``uint8 [H, W, 3]`` of an image file, a PIL image or a ``uint8 [H, W, 3]`` array (numpy or torch), resized to
    ``height x width`` as the reference's frames are. :class:`VideoError` / ``TypeError`` start with ``option``."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise VideoError(f"{option} {path}: no such file" + (" (a folder)" if path.is_dir() else ""))
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - PIL raises several types for a damaged or foreign file
            raise VideoError(f"{option} {path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    elif isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = _rgb_array(image, 3, option, "a path, a PIL image or a uint8 [H, W, 3] array",
                       "an image must be uint8 [H, W, 3]")
    return _resized([image], height, width)[0]


def _rgb_array(x, ndim: int, option: str, accepted: str, shape_rule: str) -> np.ndarray:
    """``x`` (numpy, or torch without importing torch here) as a non-empty uint8 numpy array of ``ndim``
    dimensions, the last 3; a ``TypeError`` or :class:`VideoError` starting with ``option`` otherwise."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{option} must be {accepted}, got {type(x).__name__}")
    if x.dtype != np.uint8 or x.ndim != ndim or x.shape[-1] != 3 or 0 in x.shape:
        raise VideoError(f"{option}: {shape_rule}, got {x.dtype} {list(x.shape)}")
    return x


def _read_frames(path, frames: int | None, option: str) -> list[np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{option} {path}: no such file or folder")
    got = _read_folder(path, frames, option) if path.is_dir() else _read_container(path, frames, option)
    if not got:
        raise VideoError(f"{option} {path}: no frames could be decoded")
    if frames is not None and len(got) < frames:
        raise VideoError(f"{option} {path}: has {len(got)} frames, fewer than the {frames} asked for (--frames)")
    return got


def check_video(path, frames: int | None = None, *, option: str = "--video") -> None:
    """Raise what :func:`read_video` would for a missing, unreadable or too short input, decoding only
    ``frames`` frames (default 1) and keeping none: the cheap check a command makes before loading a model."""
    _read_frames(path, frames or 1, option)


def write_video(frames: np.ndarray, path, fmt: str = "mp4", fps: int = 8) -> Path:
    """Write ``uint8 [F, H, W, 3]`` as ``mp4`` (H.264), ``gif`` or ``frames`` (a folder of PNGs), atomically.

    Returns the final path (for ``frames``, the folder).
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    path = Path(path)
    if fmt == "frames":
        return _write_frames(frames, path)
    if fmt not in ("mp4", "gif"):
        raise ValueError(f"format must be mp4, gif or frames, got {fmt!r}")
    with atomic_path(path) as tmp:
        if fmt == "gif":
            from PIL import Image

            imgs = [Image.fromarray(f) for f in frames]
            imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        else:
            _write_mp4(frames, tmp, fps)
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    import av

    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_frames(frames: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_dir(path) as tmp:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(tmp / f"frame_{i:05d}.png")
    return path
