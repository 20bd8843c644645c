"""The first-frame image the app accepts: checked before anything is copied or decoded whole."""

from __future__ import annotations

from pathlib import Path

# The first-frame image the page accepts: an upload of one of these kinds, at most this big (a run resizes it to
# the video's size anyway; the caps keep a decompression bomb or a huge upload from reaching the decoder).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
MAX_IMAGE_BYTES = 32 * 2 ** 20
MAX_IMAGE_PIXELS = 8192 * 8192


def check_image(path: str) -> None:
    """A first-frame upload the page accepts: a file of :data:`IMAGE_FORMATS` (by its content, not its name), at
    most :data:`MAX_IMAGE_BYTES` and :data:`MAX_IMAGE_PIXELS`, that decodes whole; else ``ValueError`` naming
    ``--image``. The size is read from the header before anything is decoded."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--image {path}: no such file")
    size = p.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"--image: {size / 2 ** 20:.1f} MiB, more than the {MAX_IMAGE_BYTES // 2 ** 20} MiB "
                         "the app accepts")
    unreadable = f"--image: not a readable image of {', '.join(IMAGE_FORMATS)}"
    try:
        im = Image.open(p, formats=IMAGE_FORMATS)
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for a foreign or damaged file
        raise ValueError(f"{unreadable} ({type(exc).__name__})") from None
    with im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"--image: {im.width}x{im.height} pixels, more than the {MAX_IMAGE_PIXELS:,} the app "
                             "accepts")
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001 - a truncated or damaged file
            raise ValueError(f"{unreadable} ({type(exc).__name__})") from None


def image_note(record: dict | None) -> str:
    """Whether a finished run took a first-frame image, and how (the run's ``record["image"]``), for the page."""
    how = (record or {}).get("image")
    return f"First frame: {how}" if how else "First frame: none (the video is generated from the prompt alone)"
