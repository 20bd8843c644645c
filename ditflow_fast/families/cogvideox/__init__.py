"""CogVideoX 1.0 (2B, 5B) and 1.5 (5B): :mod:`.family` (the seam), :mod:`.patches` (1.5's temporal patches),
:mod:`.components` (loading, T5, VAE), :mod:`.memory` (the ``--dry-run`` model), :mod:`.tiny` (tiny random models
for tests)."""

from .family import CogVideoXFamily

__all__ = ["CogVideoXFamily"]
