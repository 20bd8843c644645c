"""Named benchmark shapes: CogVideoX geometry, CPU-sized versions of it, and a tiny smoke shape.

A preset names one :class:`ditflow_fast.geometry.AMFGeometry` (heads ``H``, head size ``d``, latent
frames ``F``, patches ``h x w`` per frame and the text prefix that is skipped; batch 1), which is all
the AMF cost depends on. ``N = F*h*w`` video tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..geometry import AMFGeometry


@dataclass(frozen=True)
class Preset:
    name: str
    geometry: AMFGeometry
    summary: str

    def __getattr__(self, attr: str):
        # Reached only for names a Preset itself lacks: its sizes and counts (preset.tokens, .heads)
        # are the geometry's, read through rather than copied into a second description.
        if attr.startswith("_") or attr == "geometry":
            raise AttributeError(attr)
        return getattr(self.geometry, attr)

    def as_dict(self) -> dict:
        """The record's ``preset``: name, summary, the sizes (batch aside: always 1) and ``tokens``."""
        g = self.geometry
        sizes = {f.name: getattr(g, f.name) for f in fields(g) if f.name != "batch"}
        return {"name": self.name, **sizes, "summary": self.summary, "tokens": g.tokens}


def _p(name: str, heads: int, head_dim: int, frames: int, height: int, width: int, text_tokens: int,
       summary: str) -> tuple[str, Preset]:
    geometry = AMFGeometry(heads=heads, head_dim=head_dim, frames=frames, height=height, width=width,
                           text_tokens=text_tokens)
    return name, Preset(name, geometry, summary)


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
