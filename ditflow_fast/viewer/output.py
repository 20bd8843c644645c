"""The viewer's files: ``amf.safetensors`` (field + provenance), ``amf.png`` (every frame pair), ``amf.html``.

Every file is written to a temporary name and renamed (``ditflow_fast.atomic``: a unique temporary
per writer, removed on failure), so a reader never sees half of one and concurrent writers never
share a temporary. The side-by-side picture of two fields is composed in memory and written once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text
from .colour import flow_to_rgb, legend
from .fields import field_scale

FORMAT = "ditflow-fast amf 1"


def _save_png(path: Path, image) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def save_amf(path, amf: np.ndarray, info: dict) -> Path:
    """``[F, F, h*w, 2]`` as tensor ``amf`` with ``info`` (geometry, provenance) as string metadata."""
    import torch
    from safetensors.torch import save_file

    amf = np.ascontiguousarray(amf, np.float32)
    f, f2, s, two = amf.shape
    if f != f2 or two != 2 or s != info["height"] * info["width"]:
        raise ValueError(f"AMF must be [F, F, h*w, 2] with h*w = {info['height']}*{info['width']}, got {amf.shape}")
    meta = {"format": FORMAT, "layout": "amf[i, j, y*w + x] = (dx, dy) in patches: where patch (x, y) of latent "
            "frame i moves in latent frame j",
            **{k: json.dumps(v) for k, v in info.items()}}  # strings too: a video named "2024" stays a string
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"amf": torch.from_numpy(amf)}, str(tmp), metadata=meta)
    return path


def load_amf(path) -> tuple[np.ndarray, dict]:
    """``(amf, info)`` as :func:`save_amf` wrote them (json values decoded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        meta = fh.metadata() or {}
        amf = fh.get_tensor("amf")
    info = {}
    for k, v in meta.items():
        try:
            info[k] = json.loads(v)
        except ValueError:
            info[k] = v
    return amf, info


def blend(frame: np.ndarray, amf_pair: np.ndarray, h: int, w: int, scale: float, alpha: float = 0.6) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the colour of each patch's displacement over ``frame`` (resized to the patch grid
    times a whole number), ``alpha`` the colour's weight."""
    from PIL import Image

    col = flow_to_rgb(amf_pair[:, 0].reshape(h, w), amf_pair[:, 1].reshape(h, w), scale)
    big = np.asarray(Image.fromarray(col).resize((frame.shape[1], frame.shape[0]), Image.NEAREST), np.float32)
    return np.clip(alpha * big + (1 - alpha) * frame.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)


def grid_png(path, amf: np.ndarray, frames: np.ndarray, h: int, w: int, *, title: str = "",
             scale: float | None = None) -> Path:
    """``amf.png``: row ``i`` (first frame), column ``j`` (second frame), tile = the pair's field over frame ``i``;
    a legend wheel and the scale in the corner. ``frames``: uint8 ``[F, H, W, 3]``, one per latent frame."""
    return _save_png(Path(path), grid_image(amf, frames, h, w, title=title, scale=scale))


def grid_image(amf: np.ndarray, frames: np.ndarray, h: int, w: int, *, title: str = "", scale: float | None = None):
    """The picture of :func:`grid_png`, as a PIL RGB image (nothing written)."""
    from PIL import Image, ImageDraw

    f = amf.shape[0]
    scale = field_scale(amf) if scale is None else scale
    tw = int(np.clip(1600 // max(f, 1), 48, 192))
    th = max(8, round(tw * frames.shape[1] / frames.shape[2]))
    small = [np.asarray(Image.fromarray(fr).resize((tw, th), Image.BILINEAR)) for fr in frames]
    margin, top = 28, 34
    canvas = Image.new("RGB", (margin + f * (tw + 2) + 110, top + f * (th + 2) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), (title + "  " if title else "") + f"rows: first frame i, columns: second frame j; "
              f"full colour = {scale:.2f} patches", fill=(0, 0, 0))
    for j in range(f):
        draw.text((margin + j * (tw + 2) + tw // 2 - 4, top - 12), str(j), fill=(0, 0, 0))
    for i in range(f):
        draw.text((4, top + i * (th + 2) + th // 2 - 5), str(i), fill=(0, 0, 0))
        for j in range(f):
            tile = blend(small[i], amf[i, j], h, w, scale)
            canvas.paste(Image.fromarray(tile), (margin + j * (tw + 2), top + i * (th + 2)))
    lg = Image.fromarray(legend(96), "RGBA")
    canvas.paste(lg, (margin + f * (tw + 2) + 8, top), lg)
    draw.text((margin + f * (tw + 2) + 8, top + 100), "right: red\ndown: yellow\nleft: cyan\nup: blue", fill=(0, 0, 0))
    return canvas


def write_viewer(out, fields: list[tuple[str, np.ndarray, np.ndarray]], info: dict, *, stem: str = "amf",
                 title: str = "Attention Motion Flow") -> dict[str, Path]:
    """Write ``{stem}.safetensors`` (the first field; with two, ``{stem}_generated.safetensors`` too),
    ``{stem}.png`` and ``{stem}.html``. ``fields``: ``(name, amf [F, F, h*w, 2], frames uint8 [F, H, W, 3])``,
    one (a video) or two (reference, generated: the page shows them side by side with the per-pair error)."""
    from .page import render_page

    out = Path(out)
    h, w = int(info["height"]), int(info["width"])
    scale = field_scale(*[a for _, a, _ in fields])
    paths = {"safetensors": save_amf(out / f"{stem}.safetensors", fields[0][1], {**info, "field": fields[0][0]})}
    if len(fields) > 1:
        paths["safetensors_generated"] = save_amf(out / f"{stem}_generated.safetensors", fields[1][1],
                                                  {**info, "field": fields[1][0]})
    if len(fields) == 1:
        paths["png"] = grid_png(out / f"{stem}.png", fields[0][1], fields[0][2], h, w, title=fields[0][0], scale=scale)
    else:
        from PIL import Image

        tiles = [grid_image(amf, frames, h, w, title=name, scale=scale) for name, amf, frames in fields]
        canvas = Image.new("RGB", (sum(t.width for t in tiles) + 10, max(t.height for t in tiles)), (255, 255, 255))
        x = 0
        for t in tiles:
            canvas.paste(t, (x, 0))
            x += t.width + 10
        paths["png"] = _save_png(out / f"{stem}.png", canvas)
    html = render_page(fields, info, scale=scale, title=title)
    paths["html"] = write_text(out / f"{stem}.html", html)
    return paths
