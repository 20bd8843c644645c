"""Plain (unguided) sampling from the tiny DiT, with classifier-free guidance: the sanity check of training.

The guided rows of the demo go through the package's DiTFlow loop (:mod:`ditflow_fast.guidance`);
this sampler is the minimal loop used to look at what the model learned and by the tests.
"""

from __future__ import annotations

import numpy as np
import torch

from .codec import PixelCodec, check_codec
from .model import from_family_layout, to_family_layout
from .world import FRAMES, NULL_CONDITION, SIZE


@torch.no_grad()
def sample(transformer, cond_embed, scheduler, conditions, *, steps: int = 25, cfg: float = 3.0, seed: int = 0,
           frames: int = FRAMES, size: int = SIZE, cfg_min_t: int = 0, codec=None) -> np.ndarray:
    """Videos ``[B, F, 3, S, S]`` in [0, 1] for the condition indices ``conditions`` (one video each).

    The initial noise of video ``i`` is drawn from ``seed + i`` so a batch equals its videos drawn one
    at a time. ``cfg`` <= 1 disables classifier-free guidance (one forward per step instead of two);
    ``cfg_min_t`` limits it to the timesteps ``>= cfg_min_t`` (below them, the conditional prediction alone).
    ``codec`` (:mod:`.codec`) decodes the latents; the default is a pixel-space model's. The model runs
    through its family's adapter and sampler (``ditflow_fast.families``): CogVideoX or Wan."""
    from ..families import family_of
    from ..guidance.config import GuidanceConfig

    codec = PixelCodec() if codec is None else codec
    check_codec(transformer, codec)
    fam = family_of(transformer)
    conds = torch.as_tensor(list(conditions), dtype=torch.long)
    b = conds.shape[0]
    ls = codec.latent_size(size)
    noise = torch.stack([torch.randn(frames, codec.channels, ls, ls, generator=torch.Generator().manual_seed(seed + i))
                         for i in range(b)])
    sampler = fam.make_sampler(scheduler, GuidanceConfig(scheduler="ddim" if fam.name == "cogvideox" else "unipc"))
    x = to_family_layout(transformer, noise * sampler.init_noise_sigma)
    timesteps = sampler.set_timesteps(steps, device="cpu")
    use_cfg = cfg > 1.0
    text = cond_embed(conds)
    if use_cfg:
        text = torch.cat([cond_embed(torch.full_like(conds, NULL_CONDITION)), text])
    for i, t in enumerate(timesteps):
        guided = use_cfg and int(t) >= cfg_min_t
        inp = torch.cat([x, x]) if guided else x
        v = fam.forward(transformer, inp, text if guided else text[-b:], int(t))
        if guided:
            v_u, v_c = v.chunk(2)
            v = v_u + cfg * (v_c - v_u)
        x = sampler.step(i, t, v, x, None)
    return codec.decode(from_family_layout(transformer, x)).numpy()
