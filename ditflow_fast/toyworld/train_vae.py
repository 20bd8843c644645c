"""Train the tiny frame autoencoder (:class:`~.codec.FrameAutoencoder`) on the world's frames.

Loss: pixel MSE of ``decode(encode(x) + noise)`` plus a small penalty on the latents' size. The
noise (fixed std ``latent_noise``) makes the decoder render clean frames from latents that are a
little off, which is what a diffusion sample's latents are; the penalty keeps the encoder from
outgrowing the noise (together they are a VAE with a fixed posterior variance). Afterwards the
latents of fresh world frames set the codec's ``shift`` and ``scale``.

Frames are drawn on the fly from ``(seed, step)`` in a stream of their own (not the DiT's clips).
The autoencoder is written atomically to ``<out>/vae/`` every ``save_every`` steps and at the end,
with its log in ``<out>/vae/train_log.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .codec import FrameAutoencoder, save_codec
from .train import learning_rate
from .world import make_batch

_STREAM = 4049  # keeps the autoencoder's frames apart from the DiT's training clips


def world_frames(seed: int, step: int, clips: int, stream: int = _STREAM) -> torch.Tensor:
    """``[clips * F, 3, S, S]`` world frames in [0, 1], a pure function of ``(seed, step, stream)``."""
    videos, _ = make_batch(np.random.default_rng([seed, stream, step]), clips)
    v = torch.from_numpy(videos)
    return v.reshape(-1, *v.shape[2:])


@torch.no_grad()
def calibrate(ae: FrameAutoencoder, seed: int, clips: int = 64) -> None:
    """Set ``shift``/``scale`` so the latents of fresh world frames are zero-mean, unit-variance."""
    z = ae.encode_frames(world_frames(seed, 0, clips, stream=_STREAM + 1))  # frames training never saw
    ae.shift.fill_(float(z.mean()))
    ae.scale.fill_(float(z.std()))


def train_vae(out, *, minutes: float = 10.0, max_steps: int = 3000, clips: int = 8, lr: float = 1e-3,
              lr_final: float = 5e-5, latent_noise: float = 0.15, latent_penalty: float = 1e-3, channels: int = 8,
              width: int = 64, seed: int = 0, threads: int = 1, save_every: int = 500, log_every: int = 50) -> dict:
    if not latent_noise >= 0 or not latent_penalty >= 0:
        raise ValueError(f"latent_noise and latent_penalty must be >= 0, got {latent_noise} and {latent_penalty}")
    if max_steps < 1 or clips < 1:
        raise ValueError(f"max_steps and clips must be positive, got {max_steps} and {clips}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ae = FrameAutoencoder(channels, width)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    config = dict(seed=seed, clips=clips, lr=lr, lr_final=lr_final, lr_schedule="cosine over max_steps",
                  max_steps=max_steps, latent_noise=latent_noise, latent_penalty=latent_penalty, threads=threads)
    log_dir = Path(out) / "vae"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "train_log.txt"
    log_path.write_text(f"# {json.dumps(config)}\n# step  elapsed_s  recon_mse  latent_ms  lr\n")
    g = torch.Generator().manual_seed(seed)
    t0, rec, pen, step = time.monotonic(), [], [], 0

    def save():
        ae.eval()
        calibrate(ae, seed)
        save_codec(out, ae, extra={"train": {**config, "steps": step,
                                             "elapsed_s": round(time.monotonic() - t0, 1)}})
        ae.train()

    while step < max_steps and time.monotonic() - t0 < minutes * 60:
        x = world_frames(seed, step, clips) * 2 - 1
        mu = ae.encoder(x)
        y = ae.decoder(mu + latent_noise * torch.randn(mu.shape, generator=g))
        mse, ms = torch.nn.functional.mse_loss(y, x), (mu ** 2).mean()
        cur = learning_rate(step, lr, warmup=0, lr_final=lr_final, anneal_start=0, anneal_end=max_steps)
        for group in opt.param_groups:
            group["lr"] = cur
        opt.zero_grad(set_to_none=True)
        (mse + latent_penalty * ms).backward()
        opt.step()
        step += 1
        rec.append(mse.item())
        pen.append(ms.item())
        if step % log_every == 0:
            with open(log_path, "a") as fh:
                fh.write(f"{step} {time.monotonic() - t0:.1f} {np.mean(rec[-log_every:]):.5f} "
                         f"{np.mean(pen[-log_every:]):.3f} {cur:.2e}\n")
        if step % save_every == 0:
            save()
    save()
    return {"steps": step, "elapsed_s": time.monotonic() - t0, "recon_mse": float(np.mean(rec[-log_every:])),
            "scale": float(ae.scale)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="train the toy world's tiny frame autoencoder (CPU, bounded time)")
    p.add_argument("--out", required=True, help="model folder; the autoencoder goes to <out>/vae/")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--clips", type=int, default=8, help="clips per step (8 frames each)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-noise", type=float, default=0.15)
    p.add_argument("--latent-penalty", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args(argv)
    res = train_vae(a.out, minutes=a.minutes, max_steps=a.max_steps, clips=a.clips, lr=a.lr,
                    latent_noise=a.latent_noise, latent_penalty=a.latent_penalty, channels=a.channels, seed=a.seed,
                    threads=a.threads)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
