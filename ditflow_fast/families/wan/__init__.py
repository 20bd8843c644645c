"""Wan2.1 / Wan2.2 text- and image-to-video: :mod:`.family` (the seam), :mod:`.image` (the image-to-video
inputs), :mod:`.attention` (its guided processor), :mod:`.sampler` (UniPC with a resumable state), :mod:`.text`
(umT5), :mod:`.presets`, :mod:`.memory` (``--dry-run``), :mod:`.chunking` (the guided backward's block tail, FFN
included, in token slices), :mod:`.tiny` (tiny test models)."""

from .family import WanFamily

__all__ = ["WanFamily"]
