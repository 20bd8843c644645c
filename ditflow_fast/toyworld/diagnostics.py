"""Does a block's attention follow the object? The AMF of the tiny DiT against the world's ground truth.

For a clip, DiTFlow's reference AMF (argmax mode, clean clip at timestep 0, empty prompt) is computed
at every block; at the patch holding the object's centre in frame ``i`` the displacement towards
frame ``j`` should equal the object's true displacement ``(track[j] - track[i]) / patch_size``.
The mean error over frame pairs ``i != j`` (in patches) says which block carries the motion, i.e.
where guidance has something to match. Used to pick the demo's guidance block; reported in the docs.
(The one-step denoising probe, once here too, is :func:`.quality.denoise_quality`.)
"""

from __future__ import annotations

import numpy as np
import torch

from ..api import compute_amf
from .world import NULL_CONDITION, Clip


@torch.no_grad()
def amf_errors(transformer, cond_embed, clips: list[Clip], *, timestep: int = 0, codec=None,
               qk_rope: bool = True) -> np.ndarray:
    """``[blocks]`` mean AMF error (patches) at the object's centre patch over ``clips`` and frame pairs
    (``codec``: the model's, default pixels; ``qk_rope``: the AMF from q/k with RoPE or before it). Any
    family: the forward goes through its adapter."""
    from ..families import family_of
    from .codec import PixelCodec
    from .model import to_family_layout

    codec = PixelCodec() if codec is None else codec
    fam = family_of(transformer)
    n_blocks = len(fam.blocks(transformer))
    installed = getattr(transformer, "_ditflow_guidance", None) is not None
    if not installed:
        fam.install(transformer)
    errs = np.zeros((len(clips), n_blocks))
    try:
        for ci, clip in enumerate(clips):
            f, _, s, _ = clip.video.shape
            x = to_family_layout(transformer, codec.encode(torch.from_numpy(clip.video)[None]))
            _, h, w = fam.token_grid(transformer, x)
            p = s // h  # pixels per token side
            text = cond_embed(torch.tensor([NULL_CONDITION]))
            ctrl = fam.run_until(transformer, x, text, timestep, stop_after=n_blocks - 1, qk_blocks=range(n_blocks),
                                  qk_rope=qk_rope)
            centre = np.clip(np.floor(clip.track / p).astype(int), 0, h - 1)  # [F, 2] patch (x, y)
            truth = (clip.track[None] - clip.track[:, None]) / p  # [i, j, 2]
            off = ~np.eye(f, dtype=bool)
            for b in range(n_blocks):
                q, k = ctrl.qk[b]
                d = compute_amf(q, k, frames=f, height=h, width=w, mode="argmax")[0].numpy()  # [F, F, hw, 2]
                idx = centre[:, 1] * w + centre[:, 0]
                got = d[np.arange(f), :, idx]  # [i, j, 2]
                errs[ci, b] = np.linalg.norm(got - truth, axis=-1)[off].mean()
            ctrl.clear_captures()
    finally:
        if not installed:
            fam.uninstall(transformer)
    return errs.mean(axis=0)


def main(argv=None) -> int:
    """``python -m ditflow_fast.toyworld.diagnostics --model assets/tiny_wan``: the per-block AMF error."""
    import argparse

    from .codec import load_codec
    from .model import load_model
    from .settings import DEFAULT_DIR
    from .world import FRAMES, reference_clips

    p = argparse.ArgumentParser(description="mean AMF error (patches) at the object's centre, per block")
    p.add_argument("--model", default=str(DEFAULT_DIR))
    p.add_argument("--clip-seed", type=int, default=1, help="1: the tuning clips")
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--timestep", type=int, nargs="+", default=[0], help="the reference's timestep(s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-rope", action="store_true", help="the AMF from q/k before RoPE (GuidanceConfig.amf_rope)")
    a = p.parse_args(argv)
    if a.clips < 1 or a.threads < 1:
        p.error("--clips and --threads must be positive")
    torch.set_num_threads(a.threads)
    tr, cond, _ = load_model(a.model)
    clips = reference_clips(a.clip_seed, a.clips, frames=FRAMES)
    for t in a.timestep:
        errs = amf_errors(tr, cond, clips, timestep=t, codec=load_codec(a.model), qk_rope=not a.no_rope)
        how = " (q/k before RoPE)" if a.no_rope else ""
        print(f"{a.model} t={t}{how}: " + ", ".join(f"block {b} {e:.2f}" for b, e in enumerate(errs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
