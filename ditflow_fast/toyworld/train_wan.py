"""Train a tiny Wan-architecture DiT on the synthetic world, in the frame autoencoder's latents, on a CPU.

The denoiser is diffusers' ``WanTransformer3DModel`` (its 3-D RoPE, text by cross-attention from
the condition embedding's tokens, patch 1 on the autoencoder's 8 x 8 x C latent grid, so its tokens
and AMF are the CogVideoX toy model's). Objective: flow matching as Wan is trained, with the
velocity ``noise - x0`` as target at ``x_t = (1 - s) x0 + s noise``; ``s`` is drawn uniformly and
shifted as the sampler shifts it (``s' = k s / (1 + (k - 1) s)``, ``k`` = 3, the UniPC flow shift
the model folder's scheduler carries), timestep ``1000 s'``; the condition is dropped to the empty
prompt 10% of the time. An EMA of the weights is what gets saved; clips come from ``(seed, step)``,
so a resumed run sees the same data; the resume state and the model are written every
``save_every`` steps (atomically), the loss to ``<out>/train_log.txt``. ``init`` warm-starts a run
with no resume state from a saved model folder (its weights, its step count, a fresh optimiser:
Adam's normalised steps keep the size they had at a constant lr), for when the resume state is
gone; ``lr_final``/``anneal_*`` are :func:`.train.learning_rate`'s.

``python -m ditflow_fast.toyworld.train_wan --vae assets/tiny_dit --out assets/tiny_wan --minutes 60``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_text
from .model import ConditionEmbedding, save_model, world_geometry
from .train import _load_state, _state_dict, learning_rate, optimiser_step, training_batch

WAN_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny_wan"
FLOW_SHIFT = 3.0


def wan_config(channels: int, heads: int = 2, layers: int = 4) -> dict:
    from .model import TEXT_DIM

    return dict(patch_size=(1, 1, 1), num_attention_heads=heads, attention_head_dim=32, in_channels=channels,
                out_channels=channels, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=128 * heads, num_layers=layers,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)


def build_wan(channels: int, seed: int = 0, **kw):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**wan_config(channels, **kw))


def build_flow_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=FLOW_SHIFT)


def to_wan(latents: torch.Tensor) -> torch.Tensor:
    """The codec's ``[B, F, C, h, w]`` -> Wan's ``[B, C, F, h, w]``."""
    return latents.permute(0, 2, 1, 3, 4)


def from_wan(latents: torch.Tensor) -> torch.Tensor:
    return latents.permute(0, 2, 1, 3, 4)


def train_wan(out=WAN_DIR, work="build/tiny_wan_train", *, vae, minutes: float = 60.0, max_steps: int = 100_000,
              batch: int = 12, lr: float = 6e-4, warmup: int = 200, ema_decay: float = 0.999, seed: int = 0,
              save_every: int = 250, log_every: int = 50, threads: int = 1, heads: int = 2, layers: int = 4,
              init=None, lr_final: float | None = None, anneal_start: int = 0, anneal_end: int = 0) -> dict:
    from safetensors.torch import load_file, save_file

    from .codec import PixelCodec, load_codec

    codec = load_codec(vae)
    if isinstance(codec, PixelCodec):
        raise ValueError(f"--vae {vae}: holds no frame autoencoder (vae/); the Wan toy model works in its latents")
    if lr_final is not None and not 0 <= anneal_start < anneal_end:
        raise ValueError(f"lr_final needs 0 <= anneal_start < anneal_end, got {anneal_start} and {anneal_end}")
    out, work = Path(out), Path(work)
    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    net = build_wan(codec.channels, seed, heads=heads, layers=layers).train()
    cond = ConditionEmbedding(seed=seed)
    ema, ema_cond = copy.deepcopy(net).eval().requires_grad_(False), copy.deepcopy(cond).requires_grad_(False)
    opt = torch.optim.AdamW(list(net.parameters()) + list(cond.parameters()), lr=lr, weight_decay=0.0)
    step, state_path = 0, work / "state.safetensors"
    if state_path.is_file():
        step = _load_state(load_file(str(state_path)), net, ema, cond, ema_cond, opt)
        print(f"resumed at step {step}")
    elif init is not None:
        step = _warm_start(Path(init), net, ema, cond, ema_cond)
        print(f"warm-started from {init} at step {step} (fresh optimiser)")
    config = dict(arch="wan", seed=seed, heads=heads, layers=layers, batch=batch, lr=lr, warmup=warmup,
                  ema_decay=ema_decay, threads=threads, vae=str(vae), latent_channels=codec.channels,
                  **({} if init is None else dict(init=str(init))),
                  **({} if lr_final is None else dict(lr_final=lr_final, anneal_start=anneal_start,
                                                      anneal_end=anneal_end)),
                  objective=f"flow matching (target noise - x0), uniform s shifted by {FLOW_SHIFT}, "
                            "10% condition dropout")
    out.mkdir(parents=True, exist_ok=True)
    if Path(vae).resolve() != out.resolve():
        shutil.copytree(Path(vae) / "vae", out / "vae", dirs_exist_ok=True)
    log_path = out / "train_log.txt"
    if step == 0 or not log_path.is_file():
        log_path.write_text(f"# {json.dumps(config)}\n# step  elapsed_s  loss(mean of last {log_every})  lr\n")
    t_start, losses = time.monotonic(), []
    elapsed0 = float(json.loads((work / "elapsed.json").read_text())["s"]) if (work / "elapsed.json").is_file() else 0.0
    ema_params, net_params = list(ema.parameters()), list(net.parameters())
    sched = build_flow_scheduler()

    def checkpoint():
        elapsed = elapsed0 + time.monotonic() - t_start
        sd = _state_dict(net, ema, cond, ema_cond, opt, step)
        with atomic_path(state_path) as tmp:
            save_file(sd, str(tmp), metadata={"world": json.dumps(world_geometry())})
        write_text(work / "elapsed.json", json.dumps({"s": elapsed}))
        save_model(out, ema, ema_cond, extra={"train": {**config, "steps": step, "elapsed_s": round(elapsed, 1)}},
                   scheduler=sched)

    while step < max_steps and time.monotonic() - t_start < minutes * 60:
        x0, c = training_batch(seed, step, batch)
        with torch.no_grad():
            x0 = to_wan(codec.encode((x0 + 1) / 2))
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g)
        u = torch.rand(batch, generator=g)
        s = FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)
        sv = s.view(-1, 1, 1, 1, 1)
        xt = (1 - sv) * x0 + sv * noise
        pred = net(hidden_states=xt, timestep=s * 1000, encoder_hidden_states=cond(c), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        cur_lr = learning_rate(step, lr, warmup=warmup, lr_final=lr_final, anneal_start=anneal_start,
                               anneal_end=anneal_end)
        optimiser_step(opt, loss, cur_lr, step, ema_decay, net_params, ema_params, cond, ema_cond)
        step += 1
        losses.append(loss.item())
        if step % log_every == 0:
            elapsed = elapsed0 + time.monotonic() - t_start
            with open(log_path, "a") as fh:
                fh.write(f"{step} {elapsed:.1f} {np.mean(losses[-log_every:]):.5f} {cur_lr:.2e}\n")
        if step % save_every == 0:
            checkpoint()
    checkpoint()
    return {"steps": step, "elapsed_s": elapsed0 + time.monotonic() - t_start,
            "final_loss": float(np.mean(losses[-log_every:])) if losses else float("nan")}


def _warm_start(folder: Path, net, ema, cond, ema_cond) -> int:
    from safetensors.torch import load_file

    info = json.loads((folder / "world.json").read_text()).get("train", {})
    if info.get("arch") != "wan" or "steps" not in info:
        raise ValueError(f"--init {folder}: not a tiny Wan model folder written by this trainer (world.json train)")
    weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    for m in (net, ema):
        m.load_state_dict(weights)
    w = load_file(str(folder / "cond_embed.safetensors"))["weight"]
    for c in (cond, ema_cond):
        c.weight.data.copy_(w)
    return int(info["steps"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="train the tiny Wan DiT of the toy world (CPU, bounded time)")
    p.add_argument("--vae", default=str(WAN_DIR.parent / "tiny_dit"), help="model folder whose vae/ to work in")
    p.add_argument("--out", default=str(WAN_DIR))
    p.add_argument("--work", default="build/tiny_wan_train")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--init", default=None, help="warm-start from this model folder when --work holds no resume state")
    p.add_argument("--lr-final", type=float, default=None, help="cosine-anneal the lr to this (default: constant)")
    p.add_argument("--anneal-start", type=int, default=0)
    p.add_argument("--anneal-end", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args(argv)
    res = train_wan(a.out, a.work, vae=a.vae, minutes=a.minutes, max_steps=a.max_steps, batch=a.batch, lr=a.lr,
                    seed=a.seed, save_every=a.save_every, threads=a.threads, heads=a.heads, layers=a.layers,
                    init=a.init, lr_final=a.lr_final, anneal_start=a.anneal_start, anneal_end=a.anneal_end)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
