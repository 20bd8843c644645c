"""HunyuanVideo text-to-video: :mod:`.family` (the seam), :mod:`.attention` (the guided joint attention of both
kinds of block), :mod:`.sampler` (flow-matching Euler, resumable), :mod:`.text` (the pipeline's Llama + CLIP
``encode_prompt``, packed), :mod:`.presets` (the public config, defaults), :mod:`.memory` (``--dry-run``),
:mod:`.tiny` (tiny test models)."""

from .family import HunyuanVideoFamily

__all__ = ["HunyuanVideoFamily"]
