"""Is a sample the conditioned object moving coherently? Per-video quality numbers against the world.

For a video that should show one object of a known condition (kind and colour), with the colour
tracker of :mod:`.metrics`:

- ``tracked``: frames in which the object's colour is found;
- ``speed``: mean distance (px) the tracked centre moves per frame (the world: ``world.SPEED_RANGE``);
- ``jerk``: mean ``|x[k+1] - 2 x[k] + x[k-1]|`` (px) of the tracked centre (the world: 0, constant velocity);
- ``area``: mean pixels per frame of the object's colour (:func:`.metrics.object_area`);
- ``iou``: per frame, the IoU of the colour mask (colour weight > 0.5) with the world's rendering of the
  conditioned kind at the tracked centre (coverage > 0.5), averaged over tracked frames: 1 for a
  crisp object of the right shape and size, low for a blob, a smear or a wrong size;
- ``kind_ok``: fraction of tracked frames in which the conditioned kind fits the mask best of the
  three kinds (chance 1/3), i.e. whether the shape is recognisably a square, a disk or a cross.

``python -m ditflow_fast.toyworld.quality --model DIR --steps 20 50 --cfg 3 5`` samples the model
(one video per condition, :func:`.sample.sample`) for every setting, prints these numbers, in all and
per kind (and the world's own for comparison), and with ``--png`` writes the sample strip the docs
show. ``--cfg-min-t T`` applies the guidance only at timesteps >= T. ``--denoise-t 50 300`` adds
the one-step denoising probe of :func:`denoise_quality` on ``n`` world clips.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..atomic import append_line
from .metrics import colour_weights, object_area, track_colour
from .world import KINDS, Clip, colour_of, condition_parts, reference_clips, render_object

STRIP_CONDITIONS = (0, 5, 10, 3, 7, 8)  # red square, green disk, blue cross, yellow square, yellow disk, red cross
KEYS = ("tracked", "speed", "jerk", "area", "iou", "kind_ok")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def video_quality(video: np.ndarray, condition: int) -> dict[str, float]:
    """The quality numbers (module docstring) of one video ``[F, 3, S, S]`` in [0, 1] meant to show ``condition``."""
    kind, _ = condition_parts(condition)
    colour = colour_of(condition)
    track = track_colour(video, colour)
    ok = np.isfinite(track).all(axis=1)
    masks = colour_weights(video, colour) > 0.5
    ious, kind_hits = [], []
    for f in np.flatnonzero(ok):
        fits = [_iou(masks[f], render_object(k, colour, track[f], size=video.shape[-1])[0] > 0.5)
                for k in range(len(KINDS))]
        ious.append(fits[kind])
        kind_hits.append(float(np.argmax(fits) == kind))
    step = np.linalg.norm(np.diff(track, axis=0), axis=1)
    jerk = np.linalg.norm(np.diff(track, 2, axis=0), axis=1)
    nan = float("nan")
    return {"tracked": float(ok.sum()),
            "speed": float(np.nanmean(step)) if np.isfinite(step).any() else nan,
            "jerk": float(np.nanmean(jerk)) if np.isfinite(jerk).any() else nan,
            "area": object_area(video, colour),
            "iou": float(np.mean(ious)) if ious else 0.0,
            "kind_ok": float(np.mean(kind_hits)) if kind_hits else 0.0}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every number over videos (NaN entries skipped)."""
    return {k: float(np.nanmean([r[k] for r in rows])) for k in KEYS}


def world_quality(n: int = 12, seed: int = 0, codec=None) -> dict[str, float]:
    """The numbers on the world's own clips: what a perfect model scores; with ``codec``, on the clips
    encoded and decoded by it (what a perfect model of its latents scores)."""
    clips = reference_clips(seed, n)
    if codec is None:
        return summarise([video_quality(c.video, c.condition) for c in clips])
    import torch

    with torch.no_grad():
        videos = codec.decode(codec.encode(torch.from_numpy(np.stack([c.video for c in clips])))).numpy()
    return summarise([video_quality(v, c.condition) for v, c in zip(videos, clips, strict=True)])


def sample_quality(transformer, cond_embed, scheduler, *, n: int = 12, steps: int = 20, cfg: float = 5.0,
                   seed: int = 0, batch: int = 12, cfg_min_t: int = 0, codec=None):
    """``(summary, summary by kind, videos [n, F, 3, S, S], conditions)``: ``n`` samples, condition ``i % 12``
    from seed ``seed + i`` (``codec``: the model's, :func:`.codec.load_codec`; default pixels)."""
    from .sample import sample
    from .world import NUM_CONDITIONS

    conds = [i % NUM_CONDITIONS for i in range(n)]
    videos = np.concatenate([sample(transformer, cond_embed, scheduler, conds[i:i + batch], steps=steps, cfg=cfg,
                                    seed=seed + i, cfg_min_t=cfg_min_t, codec=codec) for i in range(0, n, batch)])
    rows = [video_quality(v, c) for v, c in zip(videos, conds, strict=True)]
    return summarise(rows), summarise_by_kind(rows, conds), videos, conds


def summarise_by_kind(rows: list[dict[str, float]], conditions) -> dict[str, dict[str, float]]:
    """``{kind name: summary}`` of the rows whose condition shows that kind (kinds with no rows left out)."""
    kinds = [condition_parts(int(c))[0] for c in conditions]
    return {name: summarise([r for r, k in zip(rows, kinds, strict=True) if k == i])
            for i, name in enumerate(KINDS) if i in kinds}


def denoise_quality(transformer, cond_embed, scheduler, clips: list[Clip], timesteps, *, seed: int = 0,
                    codec=None) -> list[dict]:
    """One-step denoising of real clips: is the denoiser itself sharp, or only the sampler's output blurry?

    Each clip is noised to timestep ``t`` (noise from ``seed``), the model (conditioned, no CFG) predicts
    ``x0`` from its v-prediction in one step, and the prediction is scored with :func:`video_quality`.
    ``input_iou`` scores the noisy input itself (``x_t / sqrt(alpha_bar)``): the bar the prediction should clear.
    One dict per timestep: ``t``, ``snr``, ``x0_mse`` (in latent units: [-1, 1] for pixels), ``iou``,
    ``kind_ok``, ``input_iou``. ``codec``: the model's (default pixels); scores are of decoded videos."""
    import torch

    with torch.no_grad():
        return _denoise_quality(transformer, cond_embed, scheduler, clips, timesteps, seed, codec)


def _denoise_quality(transformer, cond_embed, scheduler, clips, timesteps, seed, codec) -> list[dict]:
    import torch

    from .codec import PixelCodec
    from .model import rope

    codec = PixelCodec() if codec is None else codec
    x0 = codec.encode(torch.from_numpy(np.stack([c.video for c in clips])))
    conds = torch.tensor([c.condition for c in clips])
    image_rope = rope(transformer, clips[0].video.shape[0])
    acp = scheduler.alphas_cumprod
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))  # the same draw at every t

    def scores(x: torch.Tensor) -> dict[str, float]:
        videos = codec.decode(x).numpy()
        return summarise([video_quality(y, int(c)) for y, c in zip(videos, conds, strict=True)])

    out = []
    for t in map(int, timesteps):
        if not 0 <= t < len(acp):
            raise ValueError(f"timesteps must be in [0, {len(acp)}), got {t}")
        tt = torch.full((len(clips),), t)
        xt = scheduler.add_noise(x0, noise, tt)
        v = transformer(hidden_states=xt, encoder_hidden_states=cond_embed(conds), timestep=tt,
                        image_rotary_emb=image_rope, return_dict=False)[0]
        a, sig = acp[t].sqrt(), (1 - acp[t]).sqrt()
        pred = a * xt - sig * v  # x0 from v-prediction
        got = scores(pred)
        out.append({"t": t, "snr": float(acp[t] / (1 - acp[t])), "x0_mse": float(((pred - x0) ** 2).mean()),
                    "iou": got["iou"], "kind_ok": got["kind_ok"],
                    "input_iou": scores(xt / max(float(a), 1e-6))["iou"]})
    return out


def _fmt(s: dict[str, float]) -> str:
    return " ".join(f"{k} {s[k]:.3f}" for k in KEYS)


def main(argv=None) -> int:
    from .codec import PixelCodec, load_codec
    from .model import DEFAULT_DIR, load_model

    p = argparse.ArgumentParser(description="sample quality of the tiny DiT (shape, speed, jerk) per sampler setting")
    p.add_argument("--model", default=str(DEFAULT_DIR))
    p.add_argument("--steps", type=int, nargs="+", default=[20])
    p.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    p.add_argument("--cfg-min-t", type=int, default=0, metavar="T",
                   help="guidance interval: CFG only at timesteps >= T (0: every step)")
    p.add_argument("--n", type=int, default=12, help="videos per setting (condition i %% 12, seed + i)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--png", default=None, help="write the strip of STRIP_CONDITIONS (first setting) here")
    p.add_argument("--json", default=None, help="append one JSON line per setting here")
    p.add_argument("--denoise-t", type=int, nargs="*", default=[], metavar="T",
                   help="also score one-step x0 predictions of n world clips noised to these timesteps "
                   "(denoise_quality)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    print("world  ", _fmt(world_quality(a.n, a.seed)))
    tr, ce, sc = load_model(a.model)
    codec = load_codec(a.model)
    if not isinstance(codec, PixelCodec):
        print("decoded", _fmt(world_quality(a.n, a.seed, codec)), "(the world's clips through the autoencoder)")
    if a.denoise_t:
        from .world import reference_clips

        for r in denoise_quality(tr, ce, sc, reference_clips(a.seed + 5, a.n), a.denoise_t, seed=a.seed,
                                 codec=codec):
            print("denoise", " ".join(f"{k} {v:.4g}" for k, v in r.items()), flush=True)
    for steps in a.steps:
        for cfg in a.cfg:
            t0 = time.perf_counter()
            summary, by_kind, _, _ = sample_quality(tr, ce, sc, n=a.n, steps=steps, cfg=cfg, seed=a.seed,
                                                    cfg_min_t=a.cfg_min_t, codec=codec)
            print(f"steps {steps} cfg {cfg:g} ", _fmt(summary), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            for kind, s in by_kind.items():
                print(f"  {kind:<6}", _fmt(s), flush=True)
            if a.json:
                append_line(a.json, json.dumps({"model": a.model, "steps": steps, "cfg": cfg,
                                                "cfg_min_t": a.cfg_min_t, "n": a.n, **summary}))
    if a.png:
        from .media import save_strip
        from .sample import sample

        vids = [sample(tr, ce, sc, [c], steps=a.steps[0], cfg=a.cfg[0], seed=a.seed + i, cfg_min_t=a.cfg_min_t,
                       codec=codec)[0]
                for i, c in enumerate(STRIP_CONDITIONS)]
        save_strip(a.png, vids)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
