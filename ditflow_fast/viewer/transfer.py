"""The viewer of a finished ``transfer`` run: reference and generated AMF side by side, with the per-pair error.

Both fields are measured the same way, DiTFlow's reference procedure (argmax, timestep 0, the empty
prompt) at the run's guidance block (the largest when several) through the expert that guided first: the
reference from its clean latent, the generated video from the run's final latent. Written into
``--out/amf/``: ``amf.html``, ``amf.png``, ``amf.safetensors`` (reference), ``amf_generated.safetensors``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch


def _guiding_expert(guide):
    try:
        return guide.experts[guide._expert_name(guide.timesteps[0])]
    except Exception:  # noqa: BLE001 - older loops: the first transformer
        return guide.tr


def transfer_fields(guide, latents: torch.Tensor, *, offload: str = "none") -> tuple[np.ndarray, np.ndarray, dict]:
    """``(reference AMF, generated AMF, geometry)`` of a run's :class:`~ditflow_fast.guidance.loop.Guide`."""
    from .reference import capture_amf

    fam, tr = guide.family, _guiding_expert(guide)
    block = int(max(guide.cfg.guidance_blocks))
    ctrl = getattr(tr, "_ditflow_guidance", (None,))[0]
    params = next(tr.parameters(), None)
    moved = offload == "none" and params is not None and params.device != guide.device
    if moved:
        from ..families.offload import expert_swap

        for other in guide.experts.values():  # only one expert on the device at a time
            if other is not tr:
                expert_swap(tr, other, guide.device)
        tr.to(guide.device)
    # the last guided step's reference K/V must not leak into the measurement
    no_inject = ctrl.no_injection() if ctrl is not None else contextlib.nullcontext()
    rope = guide.cfg.amf_rope  # the AMF the loss compared
    try:
        with no_inject:
            ref = capture_amf(fam, tr, guide.ref, guide.empty, block, qk_rope=rope, **getattr(guide, "ref_kw", {}))
            gen = capture_amf(fam, tr, latents.to(guide.device, guide.dtype), guide.empty, block, qk_rope=rope,
                              **getattr(guide, "gen_kw", {}))
    finally:
        if moved:
            tr.to("cpu")
    f, h, w = fam.token_grid(tr, guide.ref)
    return ref, gen, dict(frames=f, height=h, width=w, block=block, amf_rope=rope)


def write_transfer_viewer(out, guide, latents: torch.Tensor | None, reference_video: np.ndarray,
                          generated_video: np.ndarray, *, model: str, video: str, offload: str = "none",
                          quiet: bool = False, fields=None) -> dict | None:
    """Write ``out/amf/``; a failure is reported on stderr and returns None (the run's result stands).
    ``fields``: :func:`transfer_fields`'s answer when the caller has it already (then ``latents`` is unused)."""
    from .. import __version__
    from .fields import pair_errors
    from .output import write_viewer
    from .reference import frame_for_latent

    try:
        ref, gen, geo = fields if fields is not None else transfer_fields(guide, latents, offload=offload)
        geo = dict(geo)
        geo.update(video_frames=int(reference_video.shape[0]), video_height=int(reference_video.shape[1]),
                   video_width=int(reference_video.shape[2]))
        err = pair_errors(ref, gen)
        off = ~np.eye(geo["frames"], dtype=bool)
        info = {**geo, "model": str(model), "family": guide.family.name, "mode": "argmax", "timestep": 0,
                "prompt": "empty", "units": "patches (dx right, dy down)", "video": str(video),
                "patch_px_x": geo["video_width"] / geo["width"], "patch_px_y": geo["video_height"] / geo["height"],
                "mean_pair_error": round(float(err[off].mean()) if off.any() else 0.0, 4),
                "ditflow_fast": __version__}
        idx_r = frame_for_latent(reference_video.shape[0], geo["frames"])
        idx_g = frame_for_latent(generated_video.shape[0], geo["frames"])
        paths = write_viewer(Path(out) / "amf", [("reference", ref, reference_video[idx_r]),
                                                 ("generated", gen, generated_video[idx_g])], info,
                             title=f"AMF of the reference and the result, block {geo['block']} of {model}")
    except Exception as exc:  # noqa: BLE001 - the viewer is a by-product: never lose a finished run to it
        print(f"ditflow-fast transfer: the AMF viewer was not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    if not quiet:
        print(f"AMF viewer: {paths['html']} (mean AMF error over frame pairs {info['mean_pair_error']:.3f} patches)")
    return paths
