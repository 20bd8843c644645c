"""Named benchmark shapes: CogVideoX geometry, CPU-sized versions of it, and a tiny smoke shape.

A preset fixes what the AMF cost depends on: heads ``H``, head size ``d``, latent frames ``F``,
patches ``h x w`` per frame and the text prefix that is skipped. ``N = F*h*w`` video tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    heads: int
    head_dim: int
    frames: int
    height: int
    width: int
    text_tokens: int
    summary: str

    @property
    def patches(self) -> int:
        return self.height * self.width

    @property
    def tokens(self) -> int:
        """Video tokens ``N = F*h*w``."""
        return self.frames * self.patches

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens}


def _p(*args) -> tuple[str, Preset]:
    return args[0], Preset(*args)


PRESETS: dict[str, Preset] = dict([
    _p("cogvideox-5b-f6", 48, 64, 6, 30, 45, 226, "CogVideoX-5B, 480x720, 24 video frames (N=8,100)"),
    _p("cogvideox-5b-f13", 48, 64, 13, 30, 45, 226, "CogVideoX-5B, 480x720, 49 video frames (N=17,550)"),
    _p("cogvideox-2b-f6", 30, 64, 6, 30, 45, 226, "CogVideoX-2B, 480x720, 24 video frames (N=8,100)"),
    _p("cogvideox-2b-f13", 30, 64, 13, 30, 45, 226, "CogVideoX-2B, 480x720, 49 video frames (N=17,550)"),
    _p("wan2.1-1.3b-f21", 12, 128, 21, 30, 52, 0, "Wan2.1-1.3B, 480x832, 81 video frames (N=32,760), no text prefix"),
    # CPU-sized: the same heads and head size, fewer patches, so a 2-core machine runs them in seconds.
    _p("cpu-5b", 48, 64, 4, 15, 22, 226, "CogVideoX-5B heads (48x64) on a CPU-sized grid: 4 frames of 15x22 (N=1,320)"),
    _p("cpu-2b", 30, 64, 4, 15, 22, 226, "CogVideoX-2B heads (30x64) on a CPU-sized grid: 4 frames of 15x22 (N=1,320)"),
    # Tiny and awkward on purpose (h != w, prime patch count, odd text prefix): for the tests.
    _p("smoke", 4, 16, 2, 5, 7, 3, "tiny shape for tests: 4x16 heads, 2 frames of 5x7 (N=70)"),
])

DEFAULT_PRESET = "cpu-5b"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
