"""Peer rows: what a user would write instead of this package, timed on the same inputs.

* ``faiss`` (argmax mode): faiss-cpu ``IndexFlatIP`` top-1 search of every query against the keys
  of each target frame, on the heads-concatenated vectors (the positive logit scale does not
  change the argmax). Optional: skipped with a reason when faiss is not installed.
* ``sdpa`` (soft mode, forward and forward+backward): ``scaled_dot_product_attention`` with the
  key coordinates as values, one call per target frame, scale ``tau / (H*sqrt(d))``.

* ``keops`` (argmax mode, GPU only, on request): KeOps' ``LazyTensor`` ``(x_i | y_j).argmax(dim=1)`` per
  target frame, on the heads-concatenated float32 vectors (what a GPU user would write without
  materialising the scores). No CPU row: on the CPU it took 2.29 s for one frame pair of
  CogVideoX-5B's size where the GEMM took 7.4 ms (issue 31).
* ``faiss_gpu`` (argmax mode, GPU only, on request): faiss ``GpuIndexFlatIP`` top-1 per target frame.

Each return the package layout ``[1, F, F, h*w, 2]`` so they are interchangeable with a backend.
The optional packages are checked for when a row is planned and skipped with the reason (not installed,
not importable, no GPU support, the wrong device); none of them has run here: no GPU.
:mod:`ditflow_fast.bench.rows` registers them; this module knows only geometries and tensors.
"""

from __future__ import annotations

import functools
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


# faiss-gpu is not among the carried wheels (scripts/gpu_check/wheels.txt): faiss-gpu-cu12 1.14.1 is a 48 MB wheel
# (over the 40 MiB the device check carries) built against CUDA 12's cuBLAS and runtime, which the lent machine's
# CUDA 13 image lacks; faiss-gpu 1.15.1 is 135 MB.
FAISS_GPU_MISSING = ("faiss is not installed (faiss-gpu's wheels cannot be carried to the lent GPU machine: 48 MB "
                     "or more, and built for CUDA 12 where its image has CUDA 13)")


@functools.cache
def _import_error(module: str) -> str | None:
    """Why ``module`` cannot be imported (not installed, or its import failed), or None; asked once per process."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken optional package is a skip reason, whatever it raises
        return f"{module} is installed but not importable: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def _gpu_only(name: str, device: str, why: str = "") -> list[str]:
    return [] if device.startswith("cuda") else [f"the {name} peer runs on a GPU only{why}"]


def keops_refusals(device: str) -> list[str]:
    """Why the KeOps peer cannot run on ``device`` here. On the CPU pykeops is not imported (importing it
    probes CUDA and compilers): a missing package is named, then the device."""
    if importlib.util.find_spec("pykeops") is None:
        why = ["pykeops is not installed (pip install pykeops; the device check carries it: "
               "scripts/gpu_check/wheels.txt)"]
    else:
        why = [w for w in (_import_error("pykeops"),) if w] if device.startswith("cuda") else []
    return why + _gpu_only("KeOps", device, " (no CPU row: 2.29 s for one CogVideoX-5B frame pair where the "
                                            "GEMM took 7.4 ms)")


def faiss_gpu_refusals(device: str) -> list[str]:
    """Why the faiss-gpu peer cannot run on ``device`` here (faiss missing, not importable, or without GPU code)."""
    if importlib.util.find_spec("faiss") is None:
        why = [FAISS_GPU_MISSING]
    elif device.startswith("cuda"):
        why = [w for w in (_import_error("faiss"),) if w]
        if not why:
            import faiss

            if not hasattr(faiss, "StandardGpuResources"):
                why = ["this faiss has no GPU code (faiss-cpu); the faiss_gpu row needs faiss-gpu"]
            elif faiss.get_num_gpus() < 1:
                why = ["faiss-gpu sees no GPU (faiss.get_num_gpus() is 0)"]
    else:
        why = []
    return why + _gpu_only("faiss_gpu", device)


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


def keops_forward(g: AMFGeometry, q: torch.Tensor, k: torch.Tensor):
    """The argmax AMF of ``q, k`` by KeOps: per target frame, ``(x_i | y_j).argmax(dim=1)`` over symbolic
    ``[N, hw]`` scores of the heads-concatenated float32 vectors (KeOps has no bf16 path)."""
    from pykeops.torch import LazyTensor

    hw = g.patches
    pos = patch_coords(g.height, g.width, device=q.device, dtype=torch.float32)

    def forward():
        x = LazyTensor(_concat(q, g, torch.float32).contiguous()[:, None, :])
        kc = _concat(k, g, torch.float32).contiguous()
        target = torch.empty(g.tokens, g.frames, 2, device=q.device)
        for j in range(g.frames):
            y = LazyTensor(kc[None, j * hw:(j + 1) * hw, :])
            best = (x | y).argmax(dim=1)  # [N, 1] key index within the frame
            target[:, j] = pos[best[:, 0].long()]
        return _layout(target, g)

    return forward


def faiss_gpu_forward(g: AMFGeometry, q: torch.Tensor, k: torch.Tensor):
    """The argmax AMF of ``q, k`` by faiss on the GPU: one ``GpuIndexFlatIP`` per target frame, fed torch
    tensors on the device (``faiss.contrib.torch_utils``)."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401 - lets the GPU indexes take device tensors

    hw = g.patches
    pos = patch_coords(g.height, g.width, device=q.device, dtype=torch.float32)
    res = faiss.StandardGpuResources()

    def forward():
        qc = _concat(q, g, torch.float32).contiguous()
        kc = _concat(k, g, torch.float32).contiguous()
        target = torch.empty(g.tokens, g.frames, 2, device=q.device)
        for j in range(g.frames):
            index = faiss.GpuIndexFlatIP(res, qc.shape[1])
            index.add(kc[j * hw:(j + 1) * hw])
            _, best = index.search(qc, 1)
            target[:, j] = pos[best[:, 0].long()]
        return _layout(target, g)

    return forward
