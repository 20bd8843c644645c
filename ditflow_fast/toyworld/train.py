"""Train the tiny video DiT on the synthetic world, on a CPU, for a bounded wall-clock time.

With ``vae`` (a model folder holding a trained :class:`~.codec.FrameAutoencoder`) the DiT learns the
autoencoder's latents instead of pixels, and the output folder gets a copy of the autoencoder.

Objective: v-prediction MSE at uniformly drawn timesteps of the CogVideoX DDIM schedule; the
condition is dropped to the empty prompt 10% of the time (so classifier-free guidance works and
the "empty prompt" of DiTFlow's reference pass is meaningful). An exponential moving average of
the weights is what gets saved. Clips are generated on the fly from ``seed`` and the step index,
so a resumed run sees the same data as an uninterrupted one.

Progress is never lost: every ``save_every`` steps the resume state (weights, EMA, Adam moments,
step) is written atomically to ``work/state.safetensors`` and the EMA model to the output folder;
a rerun with the same arguments resumes from there. The loss goes to ``<out>/train_log.txt``.
The process uses ``threads`` torch threads (the command line's default: ``OMP_NUM_THREADS``, else 1);
run it under ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_text
from .model import (
    DEFAULT_DIR,
    TRANSFORMER_CONFIG,
    ConditionEmbedding,
    build_scheduler,
    build_transformer,
    latent_overrides,
    rope,
    save_model,
    world_geometry,
    world_mismatch,
)
from .world import NULL_CONDITION, make_batch


def _state_dict(net, ema, cond, ema_cond, opt, step: int) -> dict[str, torch.Tensor]:
    out = {f"net.{k}": v for k, v in net.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    out["cond.weight"], out["ema_cond.weight"] = cond.weight.data, ema_cond.weight.data
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            out[f"opt.{i}.exp_avg"], out[f"opt.{i}.exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
            out[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    out["step"] = torch.tensor([step], dtype=torch.int64)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _load_state(sd, net, ema, cond, ema_cond, opt) -> int:
    net.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("ema.")})
    cond.weight.data.copy_(sd["cond.weight"])
    ema_cond.weight.data.copy_(sd["ema_cond.weight"])
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in sd:
            opt.state[p] = {"exp_avg": sd[f"opt.{i}.exp_avg"].clone(), "exp_avg_sq": sd[f"opt.{i}.exp_avg_sq"].clone(),
                            "step": torch.tensor(float(sd[f"opt.{i}.step"][0]))}
    return int(sd["step"][0])


def _check_state_world(path: Path) -> None:
    # resuming on other clips would silently mix two worlds in one set of weights
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        recorded = (fh.metadata() or {}).get("world")
    if recorded is None:
        raise ValueError(f"{path} does not record the world it was trained on (written before states did): "
                         "pass another --work folder")
    differ = world_mismatch(json.loads(recorded))
    if differ:
        raise ValueError(f"{path} was trained on another world than this package's (recorded, now): {differ}; "
                         "pass another --work folder")


def learning_rate(step: int, lr: float, *, warmup: int = 200, lr_final: float | None = None,
                  anneal_start: int = 0, anneal_end: int = 0) -> float:
    """The learning rate of training step ``step`` (0-based): a pure function of the step, so a
    resumed run follows exactly the schedule of an uninterrupted one.

    Linear warm-up over ``warmup`` steps; then ``lr`` until ``anneal_start``, a cosine decay to
    ``lr_final`` reached at ``anneal_end``, and ``lr_final`` after it. ``lr_final=None``: constant ``lr``."""
    scale = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if lr_final is None or step < anneal_start:
        return lr * scale
    if step >= anneal_end:
        return lr_final * scale
    frac = (step - anneal_start) / (anneal_end - anneal_start)
    return (lr_final + (lr - lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac))) * scale


def draw_timesteps(g: torch.Generator, batch: int, n: int, t_power: float = 1.0) -> torch.Tensor:
    """``[batch]`` training timesteps in ``[0, n)``, density proportional to ``t ** (t_power - 1)``."""
    if t_power == 1.0:  # uniform: the draw the committed weights were trained with, kept bit for bit
        return torch.randint(0, n, (batch,), generator=g)
    return (n * torch.rand(batch, generator=g) ** (1.0 / t_power)).long().clamp_(max=n - 1)


def training_batch(seed: int, step: int, batch: int, drop: float = 0.1, *, with_alpha: bool = False):
    """``(x0 [B, F, 3, S, S] in [-1, 1], conditions [B])`` for one step, a pure function of (seed, step);
    with ``with_alpha`` also the object coverage ``[B, F, S, S]`` (the same clips: rendering draws nothing)."""
    rng = np.random.default_rng([seed, step])
    videos, conds, alpha = make_batch(rng, batch, with_alpha=True)
    conds = np.where(rng.uniform(size=batch) < drop, NULL_CONDITION, conds)
    out = torch.from_numpy(videos) * 2 - 1, torch.from_numpy(conds)
    return (*out, torch.from_numpy(alpha)) if with_alpha else out


def object_weighted_mse(pred: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, weight: float) -> torch.Tensor:
    """MSE with each pixel weighted ``1 + weight * alpha`` (``alpha`` ``[B, F, S, S]``, the object's coverage),
    normalised by the mean weight so its scale stays the plain MSE's. A thin object covers a tenth of a
    clip; the plain loss spends the model on the background, and samples draw such objects faint."""
    w = (1.0 + weight * alpha).unsqueeze(2)  # over the colour channels of [B, F, C, S, S]
    return ((pred - target) ** 2 * w).mean() / w.mean()  # broadcasting over C leaves the mean weight as is


def optimiser_step(opt, loss, lr: float, step: int, ema_decay: float, net_params, ema_params, cond, ema_cond) -> None:
    """One training step of either toy model: the lr, the backward, gradient clipping at 1, AdamW, and the
    EMA of the weights and of the condition table (with a short warm-up of the average)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net_params + list(cond.parameters()), 1.0)
    opt.step()
    d = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, net_params, 1 - d)
        ema_cond.weight.lerp_(cond.weight, 1 - d)


def train(out=DEFAULT_DIR, work="build/tiny_dit_train", *, minutes: float = 40.0, max_steps: int = 100_000,
          batch: int = 12, lr: float = 1e-3, warmup: int = 200, ema_decay: float = 0.999, seed: int = 0,
          save_every: int = 250, log_every: int = 50, threads: int = 1, beta_schedule: str = "scaled_linear",
          lr_final: float | None = None, anneal_start: int = 0, anneal_end: int = 0, heads: int = 2,
          layers: int = 4, t_power: float = 1.0, object_weight: float = 0.0, vae=None) -> dict:
    from safetensors.torch import load_file, save_file

    from .codec import PixelCodec, load_codec

    if not t_power > 0 or not math.isfinite(t_power):
        raise ValueError(f"t_power must be a positive number, got {t_power}")
    if not object_weight >= 0 or not math.isfinite(object_weight):
        raise ValueError(f"object_weight must be a finite number >= 0, got {object_weight}")
    if heads < 1 or layers < 1:
        raise ValueError(f"heads and layers must be positive, got {heads} and {layers}")
    if lr_final is not None and not 0 <= anneal_start < anneal_end:
        raise ValueError(f"lr_final needs 0 <= anneal_start < anneal_end, got {anneal_start} and {anneal_end}")
    codec = PixelCodec() if vae is None else load_codec(vae)
    if vae is not None and isinstance(codec, PixelCodec):
        raise ValueError(f"vae: {vae} holds no autoencoder (expected {Path(vae) / 'vae' / 'config.json'}); "
                         "train one with python -m ditflow_fast.toyworld.train_vae")
    if object_weight and not isinstance(codec, PixelCodec):
        raise ValueError("object_weight weights pixels: it needs a pixel-space model (no vae)")
    out, work = Path(out), Path(work)
    if vae is None and (out / "vae").is_dir():
        raise ValueError(f"{out} holds a latent model's autoencoder (vae/): a pixel model written there would not "
                         "load with it; pass --vae (that folder) to train a latent model, or another --out")
    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    # the time embedding as wide as the tokens, as in the committed 2-head model (64)
    width = heads * TRANSFORMER_CONFIG["attention_head_dim"]
    net = build_transformer(seed, num_attention_heads=heads, num_layers=layers, time_embed_dim=width,
                            **latent_overrides(codec)).train()
    cond = ConditionEmbedding(seed=seed)
    ema, ema_cond = copy.deepcopy(net).eval().requires_grad_(False), copy.deepcopy(cond).requires_grad_(False)
    opt = torch.optim.AdamW(list(net.parameters()) + list(cond.parameters()), lr=lr, weight_decay=0.0)
    # "scaled_linear" (CogVideoX's, betas 0.00085..0.012) or "linear" (DDPM's pixel-space 1e-4..0.02)
    betas = {"scaled_linear": (0.00085, 0.012), "linear": (1e-4, 0.02)}[beta_schedule]
    sched = build_scheduler(beta_schedule=beta_schedule, beta_start=betas[0], beta_end=betas[1])
    acp = sched.alphas_cumprod
    image_rope = rope(net)
    step, state_path = 0, work / "state.safetensors"
    if state_path.is_file():
        _check_state_world(state_path)
        state = load_file(str(state_path))
        try:
            step = _load_state(state, net, ema, cond, ema_cond, opt)
        except RuntimeError as exc:  # load_state_dict's size mismatch
            raise ValueError(f"{state_path} holds a model of another size than heads={heads}, layers={layers}, "
                             f"{'pixels' if vae is None else f'the latents of {vae}'}: pass the --heads/--layers/--vae "
                             "it was trained with, or another --work folder") from exc
        print(f"resumed at step {step}")
    uniform_t = t_power == 1.0  # the committed weights' draw: their logged config stays as it was
    config = dict(seed=seed, heads=heads, layers=layers, batch=batch, lr=lr, warmup=warmup, ema_decay=ema_decay,
                  threads=threads, beta_schedule=beta_schedule,
                  **({} if lr_final is None else dict(lr_schedule="constant, cosine decay from anneal_start to "
                                                      "lr_final at anneal_end", lr_final=lr_final,
                                                      anneal_start=anneal_start, anneal_end=anneal_end)),
                  objective=f"v_prediction MSE, {'uniform t' if uniform_t else f't density ~ t^{t_power - 1:g}'}"
                  " in [0, 1000), 10% condition dropout", **({} if uniform_t else dict(t_power=t_power)),
                  **(dict(object_weight=object_weight) if object_weight else {}),
                  **({} if vae is None else dict(vae=str(vae), latent_channels=codec.channels)))
    log_path = out / "train_log.txt"
    out.mkdir(parents=True, exist_ok=True)
    if vae is not None and Path(vae).resolve() != out.resolve():  # the model folder carries its autoencoder
        shutil.copytree(Path(vae) / "vae", out / "vae", dirs_exist_ok=True)
    if step == 0:
        log_path.write_text(f"# {json.dumps(config)}\n# step  elapsed_s  loss(mean of last {log_every})  lr\n")
    elif log_path.is_file():  # a resumed run says with which settings it went on
        with open(log_path, "a") as fh:
            fh.write(f"# resumed at step {step}: {json.dumps(config)}\n")
    t_start, losses = time.monotonic(), []
    elapsed0 = float(json.loads((work / "elapsed.json").read_text())["s"]) if (work / "elapsed.json").is_file() else 0.0
    ema_params, net_params = list(ema.parameters()), list(net.parameters())

    def checkpoint():
        elapsed = elapsed0 + time.monotonic() - t_start
        sd = _state_dict(net, ema, cond, ema_cond, opt, step)
        with atomic_path(state_path) as tmp:
            save_file(sd, str(tmp), metadata={"world": json.dumps(world_geometry())})
        write_text(work / "elapsed.json", json.dumps({"s": elapsed}))
        save_model(out, ema, ema_cond, extra={"train": {**config, "steps": step, "elapsed_s": round(elapsed, 1)}},
                   scheduler=sched)

    while step < max_steps and time.monotonic() - t_start < minutes * 60:
        x0, c, alpha = training_batch(seed, step, batch, with_alpha=True)
        if not isinstance(codec, PixelCodec):
            with torch.no_grad():
                x0 = codec.encode((x0 + 1) / 2)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g)
        t = draw_timesteps(g, batch, len(acp), t_power)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        pred = net(hidden_states=xt, encoder_hidden_states=cond(c), timestep=t, image_rotary_emb=image_rope,
                   return_dict=False)[0]
        loss = (object_weighted_mse(pred, target, alpha, object_weight) if object_weight
                else torch.nn.functional.mse_loss(pred, target))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="train the tiny video DiT of the toy world (CPU, bounded time)")
    p.add_argument("--out", default=str(DEFAULT_DIR), help="model folder to write (EMA weights, log)")
    p.add_argument("--work", default="build/tiny_dit_train", help="resume state folder")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget of this run")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final", type=float, default=None,
                   help="cosine-anneal the lr to this value from --anneal-start to --anneal-end (default: constant)")
    p.add_argument("--anneal-start", type=int, default=0, help="step at which the cosine decay of the lr begins")
    p.add_argument("--anneal-end", type=int, default=0, help="step at which the lr reaches --lr-final")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", type=int, default=2, help="attention heads of 32 dims (token width 32 x heads)")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks")
    p.add_argument("--t-power", type=float, default=1.0,
                   help="timesteps drawn with density proportional to t^(P-1): 1 uniform, 2 favours high noise")
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="weight each pixel of the loss 1 + W x the object's coverage (0: plain MSE)")
    p.add_argument("--vae", default=None,
                   help="model folder whose vae/ autoencoder the DiT works in (default: pixel space)")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--beta-schedule", choices=("scaled_linear", "linear"), default="scaled_linear")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args(argv)
    res = train(a.out, a.work, minutes=a.minutes, max_steps=a.max_steps, batch=a.batch, lr=a.lr, seed=a.seed,
                save_every=a.save_every, threads=a.threads, beta_schedule=a.beta_schedule, lr_final=a.lr_final,
                anneal_start=a.anneal_start, anneal_end=a.anneal_end, heads=a.heads, layers=a.layers,
                t_power=a.t_power, object_weight=a.object_weight, vae=a.vae)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
