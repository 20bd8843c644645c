"""Peer rows: what a user would write instead of this package, timed on the same inputs.

* ``faiss`` (argmax mode): faiss-cpu ``IndexFlatIP`` top-1 search of every query against the keys
  of each target frame, on the heads-concatenated vectors (the positive logit scale does not
  change the argmax). Optional: skipped with a reason when faiss is not installed.
* ``sdpa`` (soft mode, forward and forward+backward): ``scaled_dot_product_attention`` with the
  key coordinates as values, one call per target frame, scale ``tau / (H*sqrt(d))``.

Both return the package layout ``[1, F, F, h*w, 2]`` so they are interchangeable with a backend.
:mod:`ditflow_fast.bench.rows` registers them; this module knows only geometries and tensors.
"""

from __future__ import annotations

import importlib.util

import torch

from ..geometry import AMFGeometry, patch_coords


def faiss_unavailable() -> str | None:
    if importlib.util.find_spec("faiss") is None:
        return "faiss is not installed (pip install faiss-cpu to add this peer row)"
    return None


def faiss_refusals(device: str) -> list[str]:
    """Why the faiss peer cannot run on ``device`` here (the first reason only, as a peer has one at a time)."""
    missing = faiss_unavailable()
    if missing:
        return [missing]
    return [] if device.startswith("cpu") else ["the faiss peer runs on the CPU only"]


def sdpa_unavailable() -> str | None:
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return "this torch has no scaled_dot_product_attention"
    return None


def _concat(t: torch.Tensor, g: AMFGeometry, dtype: torch.dtype) -> torch.Tensor:
    return t[0, :, g.text_tokens:].permute(1, 0, 2).reshape(g.tokens, g.concat_dim).to(dtype)


def _layout(target: torch.Tensor, g: AMFGeometry) -> torch.Tensor:
    """``[N, F_j, 2]`` absolute targets -> ``[1, F_i, F_j, hw, 2]`` displacements."""
    own = patch_coords(g.height, g.width, device=target.device, dtype=target.dtype).repeat(g.frames, 1)
    disp = target - own[:, None, :]
    return disp.reshape(1, g.frames, g.patches, g.frames, 2).permute(0, 1, 3, 2, 4)


def faiss_forward(g: AMFGeometry, q: torch.Tensor, k: torch.Tensor):
    """The argmax AMF of ``q, k`` by exact inner-product search, one index per target frame."""
    import faiss

    hw = g.patches
    pos = patch_coords(g.height, g.width, dtype=torch.float32)

    def forward():
        qc = _concat(q, g, torch.float32).contiguous().numpy()
        kc = _concat(k, g, torch.float32).contiguous().numpy()
        target = torch.empty(g.tokens, g.frames, 2)
        for j in range(g.frames):
            index = faiss.IndexFlatIP(qc.shape[1])
            index.add(kc[j * hw:(j + 1) * hw])
            _, best = index.search(qc, 1)
            target[:, j] = pos[torch.from_numpy(best[:, 0])]
        return _layout(target, g)

    return forward


def sdpa_forward(g: AMFGeometry, q: torch.Tensor, k: torch.Tensor, temperature: float):
    """The soft AMF of ``q, k`` as attention with the key coordinates as values, one call per target frame."""
    hw = g.patches
    # CPU peers compute in float32 (as the CPU backends do); on a GPU in the input dtype.
    cdtype = q.dtype if q.device.type == "cuda" or q.dtype == torch.float64 else torch.float32
    scale = temperature / (g.heads * g.head_dim ** 0.5)  # tau / (H * sqrt(d))
    pos = patch_coords(g.height, g.width, device=q.device, dtype=cdtype)[None]

    def forward():
        qc = _concat(q, g, cdtype)[None]
        kc = _concat(k, g, cdtype)[None]
        per_frame = [torch.nn.functional.scaled_dot_product_attention(qc, kc[:, j * hw:(j + 1) * hw], pos,
                                                                      scale=scale)[0]
                     for j in range(g.frames)]
        return _layout(torch.stack(per_frame, dim=1).float(), g)

    return forward
