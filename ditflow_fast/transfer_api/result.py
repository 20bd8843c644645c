"""What a motion transfer gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TransferResult:
    """``frames``: the generated video, uint8 ``[F, H, W, 3]``; ``losses``: timestep -> the AMF loss of each
    guided pass; ``passes``: the real forward+backward passes run; ``amf_reference`` / ``amf_result``: the
    AMF (argmax, t = 0, empty prompt, the guidance block) of the reference and of the result, ``[F', F', h*w, 2]``
    (None when it could not be measured); ``out``: the run folder, None for a run in memory; ``record``: the
    run record (``config.json`` in a folder)."""

    frames: np.ndarray
    fps: int
    losses: dict[int, list[float]]
    passes: int
    amf_reference: np.ndarray | None = None
    amf_result: np.ndarray | None = None
    out: Path | None = None
    record: dict = field(default_factory=dict)

    def save(self, path, fmt: str | None = None) -> Path:
        """Write the frames as an mp4 or a gif (by the suffix, ``.mp4`` / ``.gif``), or a folder of PNG frames
        (``fmt="frames"``, or a path with no suffix). Another suffix, or a ``fmt`` the suffix contradicts, is
        refused."""
        from ..video_io import write_video

        path = Path(path)
        by_suffix = {".gif": "gif", ".mp4": "mp4", "": "frames"}.get(path.suffix.lower())
        if fmt is None and by_suffix is None:
            raise ValueError(f"path {str(path)!r}: give a .mp4 or .gif name, a folder name with no suffix, or "
                             "fmt='frames'")
        if fmt in ("mp4", "gif") and by_suffix in ("mp4", "gif") and fmt != by_suffix:
            raise ValueError(f"fmt={fmt!r} contradicts the path's suffix {path.suffix!r}")
        return write_video(self.frames, path, fmt=fmt or by_suffix, fps=self.fps)
