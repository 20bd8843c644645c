"""LTX-Video text-to-video: :mod:`.family` (the seam), :mod:`.attention` (its guided processor), :mod:`.sampler`
(flow-matching Euler with the pipeline's shift, resumable), :mod:`.text` (T5 through the pipeline's
``encode_prompt``), :mod:`.presets`, :mod:`.geometry` (the frame rule, token packing), :mod:`.memory`
(``--dry-run``), :mod:`.tiny` (tiny test models)."""

from .family import LTXFamily

__all__ = ["LTXFamily"]
