"""Seconds per job for N prompts on one reference, with and without the reference cache (docs/scale.md).

``python scripts/measure_ref_cache.py OUT [--prompts 6] [--frames 9 --height 48 --width 64] [--steps 6]``
builds the tiny CogVideoX model (or ``--wan``: the tiny Wan) and a moving-square video in ``OUT``, then
runs the N transfers in one process with the model held between jobs (as a batch worker does), once
with ``ref_cache`` and once without, alternating, and prints the median seconds per job of each, and
the reference part (VAE encode + reference forward + AMF) a miss costs and a hit costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--guided-steps", type=int, default=2)
    p.add_argument("--opt-iters", type=int, default=2)
    p.add_argument("--wan", action="store_true", help="the tiny Wan model instead of the tiny CogVideoX")
    a = p.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from ditflow_fast.batch.jobs import split
    from ditflow_fast.batch.worker import TransferWorker
    from ditflow_fast.families.cogvideox import tiny
    from ditflow_fast.video_io import write_video

    torch.set_num_threads(1)
    out = Path(a.out)
    if a.wan:
        from ditflow_fast.families.wan import tiny as wan_tiny

        model = wan_tiny.save_tiny_wan(out / "model")
        embeds = wan_tiny.tiny_prompt_embeds
    else:
        model = tiny.save_tiny_model(out / "model")
        embeds = tiny.tiny_prompt_embeds
    write_video(tiny.moving_square(a.frames, a.height, a.width), out / "video.mp4", fmt="mp4", fps=8)
    neg = embeds()["negative"]
    prompts = []
    for i in range(a.prompts):
        f = out / f"prompt{i}.safetensors"
        save_file({"prompt": embeds(seed=100 + i)["prompt"], "negative": neg}, str(f))
        prompts.append(f)
    worker = TransferWorker("measure", threads=1)
    base = {"model": str(model), "video": str(out / "video.mp4"), "frames": a.frames, "height": a.height,
            "width": a.width, "steps": a.steps, "guided_steps": a.guided_steps, "opt_iters": a.opt_iters,
            "format": "frames", "threads": 1}
    split(base)  # the options are good before anything runs
    worker.run("warm-up", {**base, "prompt_embeds": str(prompts[0])}, str(out / "warm-up"))
    times: dict[str, list[float]] = {"cache": [], "nocache": []}
    ref: dict[str, list[float]] = {"miss": [], "hit": []}
    for i, f in enumerate(prompts):
        for kind in (("cache", "nocache") if i % 2 else ("nocache", "cache")):
            extra = {"ref_cache": str(out / "ref_cache")} if kind == "cache" else {}
            t0 = time.perf_counter()
            res = worker.run(f"{kind}-{i}", {**base, "prompt_embeds": str(f), **extra}, str(out / f"{kind}-{i}"))
            if not res["ok"]:
                raise SystemExit(res["error"])
            times[kind].append(time.perf_counter() - t0)
            if kind == "cache":
                ev = json.loads((out / f"{kind}-{i}" / "config.json").read_text())["ref_cache"]["events"]
                ref["hit" if all(e["hit"] for e in ev) else "miss"].append(sum(e["seconds"] for e in ev))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.prompts} prompts on one reference ({'Wan' if a.wan else 'CogVideoX'} tiny, {a.frames} frames "
          f"{a.height}x{a.width}, {a.steps} steps, {a.guided_steps} guided x {a.opt_iters} iterations, 1 thread)")
    print(f"  seconds per job, median: without the cache {med['nocache']:.3f}, with it {med['cache']:.3f} "
          f"(saving {med['nocache'] - med['cache']:.3f} s, {100 * (1 - med['cache'] / med['nocache']):.1f}%)")
    print("  reference part inside the cache (compute + write on a miss, read on a hit): "
          + ", ".join(f"{k} {statistics.median(v):.4f} s (x{len(v)})" for k, v in ref.items() if v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
