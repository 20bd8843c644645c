"""The key of a transfer run: everything that determines its result, in named parts.

A saved state resumes only under the same key; when it differs, the parts say what differs (the
reference video, the prompts, the model, the dtype, the settings), so the refusal can name it.

- ``video``: SHA-256 of the decoded, resized frames (what the run sees, whatever the container);
- ``prompts``: SHA-256 of the ``--prompt-embeds`` file's bytes, or of the prompt texts;
- ``model``: the path or hub id plus a fingerprint of its configs and weights: every
  ``config.json``/``scheduler_config.json`` of the folder, and per weights file its size, its
  safetensors header (names, shapes, dtypes, offsets) and SHA-256 of its first and last MiB. Hashing
  all of a 10 GB checkpoint would cost more than the check is worth; an edit of the weights that
  keeps the size and both ends is not seen;
- ``dtype`` and ``settings`` (:meth:`GuidanceConfig.run_key`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

_EDGE = 1 << 20
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def video_digest(frames: np.ndarray) -> str:
    h = hashlib.sha256(str(frames.shape).encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()[:16]


def prompts_digest(prompt: str | None, negative: str, embeds_file) -> str:
    if embeds_file is not None:
        return "file:" + _sha(Path(embeds_file).read_bytes())
    return "text:" + _sha(json.dumps([prompt, negative]).encode())


def _weights_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            n = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(n, 100 << 20)))
        f.seek(0)
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(size - _EDGE, 0))
            h.update(f.read(_EDGE))
    return h.hexdigest()[:16]


def model_digest(ref: str, local: bool) -> str:
    """Path or hub id plus the fingerprint above (a hub id alone when nothing is local)."""
    if not local:
        return f"hub:{ref}"
    root = Path(ref)
    h = hashlib.sha256(str(root.resolve()).encode())
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if p.name.endswith(".json"):
            h.update(rel.encode() + p.read_bytes())
        elif p.suffix in _WEIGHTS:
            h.update(rel.encode() + _weights_fingerprint(p).encode())
    return h.hexdigest()[:16]


def key_of(parts: dict[str, str]) -> str:
    return _sha(json.dumps(parts, sort_keys=True).encode())
