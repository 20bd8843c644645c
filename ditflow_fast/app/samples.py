"""The app's offline defaults: the tiny CogVideoX model it runs without a download, and the bundled sample clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

TINY_NAME = "tiny-cogvideox"
TINY_SIZE = {"frames": 9, "height": 48, "width": 64}
TINY_PROMPT = "a dog running on a beach"
APP_JSON = "app.json"  # in a model folder the app wrote: the sizes and prompt to pre-fill


def default_cache() -> Path:
    env = os.environ.get("DITFLOW_APP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ditflow_fast" / "app"


def _has_transformers() -> bool:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_tiny_model(cache: Path) -> Path:
    """A tiny random CogVideoX diffusers folder (``ditflow_fast.families.cogvideox.tiny``) in ``cache``, written once.

    With ``transformers`` installed it has a tiny T5 and tokenizer, so a typed prompt works; it always has
    ``prompt_embeds.safetensors``. ``app.json`` holds the sizes it runs at (9 frames at 48x64)."""
    from ..atomic import atomic_dir
    from ..families.cogvideox.tiny import save_tiny_model

    path = Path(cache) / TINY_NAME
    if (path / APP_JSON).is_file():
        return path
    text = _has_transformers()
    with atomic_dir(path) as tmp:
        save_tiny_model(tmp, text_encoder=text)
        (tmp / APP_JSON).write_text(json.dumps({**TINY_SIZE, "prompt": TINY_PROMPT if text else "",
                                                "text_encoder": text}))
    return path


def model_hints(model: str) -> dict:
    """The sizes and prompt to pre-fill for ``model`` (a folder the app wrote has them), else ``{}``."""
    try:
        return json.loads((Path(model).expanduser() / APP_JSON).read_text())
    except (OSError, ValueError):
        return {}


def _ball(frames: int, height: int, width: int):
    """``[frames, height, width, 3]`` uint8: a disc crossing the frame diagonally over a dark background."""
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width]
    r = height / 6
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 2] = 40
    for f in range(frames):
        t = f / max(frames - 1, 1)
        cy, cx = r + t * (height - 2 * r), r + t * (width - 2 * r)
        video[f][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (240, 180, 40)
    return video


def ensure_samples(cache: Path) -> dict[str, Path]:
    """Bundled reference clips, written once: a moving square (81 frames, enough for every model's
    default length) and a ball crossing the frame (9 frames: the tiny model's length)."""
    from ..families.cogvideox.tiny import moving_square
    from ..video_io import write_video

    root = Path(cache) / "samples"
    clips = {"moving square (81 frames)": (root / "moving_square.mp4", lambda: moving_square(81, 96, 144)),
             "ball crossing the frame (9 frames)": (root / "ball.mp4", lambda: _ball(9, 96, 144))}
    for path, make in clips.values():
        if not path.is_file():
            write_video(make(), path, fmt="mp4", fps=8)
    return {name: path for name, (path, _) in clips.items()}
