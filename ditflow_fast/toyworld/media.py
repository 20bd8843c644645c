"""Writing toy-world videos: animated GIFs (side by side, labelled) and PNG frame strips, with Pillow.

Videos are ``[F, 3, H, W]`` float arrays in [0, 1]; they are upscaled by pixel repetition so a
32 px clip is visible. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..atomic import atomic_path


def to_uint8(video: np.ndarray, scale: int = 4) -> np.ndarray:
    """``[F, 3, H, W]`` in [0, 1] -> ``[F, H*scale, W*scale, 3]`` uint8."""
    v = np.clip(np.asarray(video, np.float32), 0.0, 1.0)
    v = (v.transpose(0, 2, 3, 1) * 255.0 + 0.5).astype(np.uint8)
    return v.repeat(scale, axis=1).repeat(scale, axis=2)


@functools.cache
def _font():
    # Pillow >= 10.1's default is a FreeType font whose space is 2 px, so "no guidance" read "noguidance";
    # its 6 px bitmap font keeps spaces and matches the 6 px per character the layouts below assume.
    from PIL import ImageFont

    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()


def _grid(videos: list[np.ndarray], labels: list[str] | None, scale: int, columns: int | None):
    from PIL import Image, ImageDraw

    frames = min(v.shape[0] for v in videos)
    tiles = [to_uint8(v[:frames], scale) for v in videos]
    th, tw = tiles[0].shape[1:3]
    cols = columns or len(tiles)
    rows = -(-len(tiles) // cols)
    label_h = 12 if labels else 0
    out = []
    for f in range(frames):
        canvas = Image.new("RGB", (cols * (tw + 2), rows * (th + 2 + label_h)), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, cols)
            x, y = c * (tw + 2), r * (th + 2 + label_h)
            canvas.paste(Image.fromarray(tile[f]), (x, y + label_h))
            if labels:
                draw.text((x + 1, y), labels[i][: max(1, tw // 6)], fill=(0, 0, 0), font=_font())
        out.append(canvas)
    return out


def save_gif(path, videos: list[np.ndarray], labels: list[str] | None = None, *, scale: int = 4,
             columns: int | None = None, fps: int = 4) -> Path:
    """An animated GIF of the videos side by side (a grid when ``columns`` is given), each labelled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _grid(videos, labels, scale, columns)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def save_strip(path, videos: list[np.ndarray], labels: list[str] | None = None, *, scale: int = 3) -> Path:
    """A PNG with one row per video and its frames left to right (for looking at motion in one image);
    with ``labels``, each row's label (the method of the row) in a column on the left."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [np.concatenate(list(_grid([v[f:f + 1] for f in range(v.shape[0])], None, scale, None)[0:1]), 0)
            for v in videos]
    canvas = np.concatenate([np.asarray(r) for r in rows], axis=0)
    if labels:
        width = 6 * max(len(t) for t in labels) + 8
        image = Image.new("RGB", (width + canvas.shape[1], canvas.shape[0]), (255, 255, 255))
        image.paste(Image.fromarray(canvas), (width, 0))
        draw, y = ImageDraw.Draw(image), 0
        for label, row in zip(labels, rows, strict=False):
            h = np.asarray(row).shape[0]
            draw.text((3, y + h // 2 - 5), label, fill=(0, 0, 0), font=_font())
            y += h
    else:
        image = Image.fromarray(canvas)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def read_train_log(path) -> np.ndarray:
    """``[n, 4]`` rows ``step, elapsed_s, loss, lr`` of a trainer's ``train_log.txt`` (``#`` lines skipped; a
    step logged twice, where a run was stopped and resumed from an earlier checkpoint, keeps its last line)."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            step, elapsed, loss, lr = line.split()[:4]
            rows[int(step)] = (int(step), float(elapsed), float(loss), float(lr))
    return np.array([rows[k] for k in sorted(rows)], dtype=np.float64).reshape(-1, 4)


def save_learning_curve(path, log: np.ndarray, *, title: str, size=(640, 320)) -> Path:
    """A PNG of the loss (log scale, black) and the learning rate (grey, linear) against the step."""
    from PIL import Image, ImageDraw

    if len(log) < 2:
        raise ValueError(f"a learning curve needs at least 2 logged steps, got {len(log)}")
    w, h = size
    left, right, top, bottom = 56, 12, 22, 30
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    steps, loss, lr = log[:, 0], np.log10(log[:, 2]), log[:, 3]

    def xy(values, lo, hi):
        xs = left + (steps - steps[0]) / max(steps[-1] - steps[0], 1) * (w - left - right)
        ys = top + (hi - values) / max(hi - lo, 1e-12) * (h - top - bottom)
        return list(zip(xs.tolist(), ys.tolist(), strict=True))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.line(xy(lr, 0.0, lr.max()), fill=(170, 170, 170), width=1)
    draw.line(xy(loss, loss.min(), loss.max()), fill="black", width=1)
    font = _font()
    draw.text((4, 4), title, fill="black", font=font)
    draw.text((4, top), f"{10 ** loss.max():.3g}", fill="black", font=font)
    draw.text((4, h - bottom - 8), f"{10 ** loss.min():.3g}", fill="black", font=font)
    draw.text((left, h - bottom + 6), f"step {int(steps[0])}", fill="black", font=font)
    draw.text((w - right - 70, h - bottom + 6), f"step {int(steps[-1])}", fill="black", font=font)
    draw.text((left + 100, h - bottom + 18), f"loss (log scale, black); lr (grey, 0 .. {lr.max():.1e})",
              fill="black", font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
