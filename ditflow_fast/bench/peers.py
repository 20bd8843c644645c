"""Peer rows: what a user would write instead of this package, timed on the same inputs.

* ``faiss`` (argmax mode): faiss-cpu ``IndexFlatIP`` top-1 search of every query against the keys
  of each target frame, on the heads-concatenated vectors (the positive logit scale does not
  change the argmax). Optional: skipped with a reason when faiss is not installed.
* ``sdpa`` (soft mode, forward and forward+backward): ``scaled_dot_product_attention`` with the
  key coordinates as values, one call per target frame, scale ``tau / (H*sqrt(d))``.

Both return the package layout ``[1, F, F, h*w, 2]`` so they are interchangeable with a backend.
"""

from __future__ import annotations

import importlib.util

import torch

from ..geometry import patch_coords

PEERS = ("faiss", "sdpa")
_MODES = {"faiss": ("argmax",), "sdpa": ("soft", "soft_fwd_bwd")}


def peer_modes(name: str) -> tuple[str, ...]:
    return _MODES[name]


def peer_unavailable(name: str, spec) -> str | None:
    """Why peer ``name`` cannot run ``spec`` here, or None."""
    if name == "faiss":
        if importlib.util.find_spec("faiss") is None:
            return "faiss is not installed (pip install faiss-cpu to add this peer row)"
        if not spec.device.startswith("cpu"):
            return "the faiss peer runs on the CPU only"
    if name == "sdpa" and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return "this torch has no scaled_dot_product_attention"
    return None


def _concat(t: torch.Tensor, p, dtype: torch.dtype) -> torch.Tensor:
    return t[0, :, p.text_tokens:].permute(1, 0, 2).reshape(p.tokens, p.heads * p.head_dim).to(dtype)


def _layout(target: torch.Tensor, p) -> torch.Tensor:
    """``[N, F_j, 2]`` absolute targets -> ``[1, F_i, F_j, hw, 2]`` displacements."""
    own = patch_coords(p.height, p.width, device=target.device, dtype=target.dtype).repeat(p.frames, 1)
    disp = target - own[:, None, :]
    return disp.reshape(1, p.frames, p.patches, p.frames, 2).permute(0, 1, 3, 2, 4)


def build_peer(spec, q: torch.Tensor, k: torch.Tensor):
    """The forward callable of peer ``spec.impl`` on ``q, k``."""
    p = spec.geometry
    hw = p.patches
    # CPU peers compute in float32 (as the CPU backends do); on a GPU in the input dtype.
    cdtype = q.dtype if q.device.type == "cuda" or q.dtype == torch.float64 else torch.float32

    if spec.impl == "faiss":
        import faiss

        pos = patch_coords(p.height, p.width, dtype=torch.float32)

        def forward():
            qc = _concat(q, p, torch.float32).contiguous().numpy()
            kc = _concat(k, p, torch.float32).contiguous().numpy()
            target = torch.empty(p.tokens, p.frames, 2)
            for j in range(p.frames):
                index = faiss.IndexFlatIP(qc.shape[1])
                index.add(kc[j * hw:(j + 1) * hw])
                _, best = index.search(qc, 1)
                target[:, j] = pos[torch.from_numpy(best[:, 0])]
            return _layout(target, p)

        return forward

    if spec.impl == "sdpa":
        from .cases import TEMPERATURE

        scale = TEMPERATURE / (p.heads * p.head_dim ** 0.5)  # tau / (H * sqrt(d))
        pos = patch_coords(p.height, p.width, device=q.device, dtype=cdtype)[None]

        def forward():
            qc = _concat(q, p, cdtype)[None]
            kc = _concat(k, p, cdtype)[None]
            per_frame = [torch.nn.functional.scaled_dot_product_attention(qc, kc[:, j * hw:(j + 1) * hw], pos,
                                                                          scale=scale)[0]
                         for j in range(p.frames)]
            return _layout(torch.stack(per_frame, dim=1).float(), p)

        return forward
    raise ValueError(f"unknown peer {spec.impl!r}; known peers: {', '.join(PEERS)}")
