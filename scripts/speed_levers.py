"""The guidance loop's speed levers on the toy world: Motion Fidelity against seconds (and guided passes) per video.

``python scripts/speed_levers.py --model assets/tiny_dit --clip-seed 1 --out build/levers/cog_seed1``

``--set tuning`` runs the guidance settings instead (guided steps, learning rate, temperature, block),
the variants a model's settings are chosen from on the tuning clips (clip seed 1).

For every reference clip and seed it runs *no guidance* once and then DiTFlow latent under each lever
(same clip, seed and initial noise; the runs of one pair follow each other, so a busy machine slows them
alike), and writes ``results.csv``, ``summary.json`` and ``levers.md``. A lever *keeps* Motion Fidelity when
its paired gain over no guidance is at least the default's gain minus the default's standard error.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

LEVERS = {  # name -> the DemoSettings fields it changes
    "defaults (10 guided steps x 5 iterations)": {},
    "3 iterations": dict(opt_iters=3),
    "2 iterations": dict(opt_iters=2),
    "5 guided steps": dict(guided_steps=5),
    "gradient reuse 3 (FastVMT)": dict(grad_reuse=3),
    "early stop 2 %": dict(early_stop=0.02),
    "early stop 4 %": dict(early_stop=0.04),
}
TUNING = {  # the settings docs/toyworld.md tunes a model's DiTFlow latent row with
    "defaults (10 guided steps x 5 iterations)": {},
    "13 guided steps": dict(guided_steps=13),
    "16 guided steps": dict(guided_steps=16),
    "lr 0.04 -> 0.02": dict(lr=(0.04, 0.02)),
    "lr 0.01 -> 0.005": dict(lr=(0.01, 0.005)),
    "temperature 1": dict(temperature=1.0),
    "temperature 4": dict(temperature=4.0),
    "block 2": dict(guidance_block=2),
    "no KV injection": dict(kv_injection=False),
    # second round, combining the first round's best (names without commas: --levers splits on them)
    "no KV injection + temperature 1": dict(kv_injection=False, temperature=1.0),
    "lr 0.04 -> 0.02 + temperature 1": dict(lr=(0.04, 0.02), temperature=1.0),
    "16 guided steps + temperature 1": dict(guided_steps=16, temperature=1.0),
    "no KV injection + temperature 1 + 16 guided steps": dict(kv_injection=False, temperature=1.0, guided_steps=16),
    # third round (session 10): a stronger optimisation at temperature 1, against the FastVMT-style row's lead on Wan
    "lr 0.08 -> 0.04 + temperature 1": dict(lr=(0.08, 0.04), temperature=1.0),
    "10 iterations + temperature 1": dict(opt_iters=10, temperature=1.0),
    "temperature 0.5": dict(temperature=0.5),
    # fourth round (session 11): the AMF from q/k before RoPE, which pins the Wan model's reference AMF
    "AMF without RoPE": dict(amf_rope=False),
    "AMF without RoPE + no KV injection": dict(amf_rope=False, kv_injection=False),
    "AMF without RoPE + temperature 1": dict(amf_rope=False, temperature=1.0),
    "AMF without RoPE + no KV injection + temperature 1": dict(amf_rope=False, kv_injection=False, temperature=1.0),
    "AMF without RoPE + block 2": dict(amf_rope=False, guidance_block=2),
    "AMF without RoPE + block 2 + no KV injection": dict(amf_rope=False, guidance_block=2, kv_injection=False),
}
SETS = {"levers": LEVERS, "tuning": TUNING}
DEFAULT = next(iter(LEVERS))


def _flag(settings: dict) -> str:
    names = {"opt_iters": "--opt-iters", "guided_steps": "--guided-steps", "grad_reuse": "--grad-reuse",
             "early_stop": "--early-stop", "lr": "--lr", "temperature": "temperature", "guidance_block": "--block",
             "kv_injection": "kv_injection", "amf_rope": "amf_rope"}
    return " ".join(f"{names[k]} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                    for k, v in settings.items()) or "(none)"


def run(model: str, clip_seed: int, clips: int, seeds: int, levers: list[str], log=print,
        variants=LEVERS) -> list[dict]:
    from ditflow_fast.toyworld.demo import ToyTransfer, other_condition
    from ditflow_fast.toyworld.metrics import motion_fidelity, track_condition
    from ditflow_fast.toyworld.world import FRAMES, reference_clips

    tt = ToyTransfer(model)
    base = tt.settings
    records = []
    for ci, ref in enumerate(reference_clips(clip_seed, clips, frames=FRAMES)):
        ref_track = track_condition(ref.video, ref.condition)
        target = other_condition(ref.condition, 1)
        for seed in range(seeds):
            for name, row in [("no guidance", "no guidance")] + [(lv, "DiTFlow latent") for lv in levers]:
                tt.settings = replace(base, **variants.get(name, {}))
                t0 = time.monotonic()
                video, _ = tt.generate(ref, target, row, seed)
                sec = time.monotonic() - t0
                mf = motion_fidelity(ref_track, track_condition(video, target))
                records.append(dict(clip=ci, seed=seed, row=name, motion_fidelity=mf, seconds=round(sec, 3),
                                    guided_passes=tt.last_result.passes))
                log(f"clip {ci} seed {seed} {name:<42} MF {mf:+.3f}  {sec:5.1f} s  {tt.last_result.passes} passes")
    return records


def summarise(records: list[dict], levers: list[str], variants=LEVERS) -> dict:
    by = {(r["row"], r["clip"], r["seed"]): r for r in records}
    keys = sorted({(r["clip"], r["seed"]) for r in records})
    out = {}
    for name in levers:
        gain = np.array([by[(name, *k)]["motion_fidelity"] - by[("no guidance", *k)]["motion_fidelity"]
                         for k in keys])
        vs_default = np.array([by[(name, *k)]["motion_fidelity"] - by[(DEFAULT, *k)]["motion_fidelity"]
                               for k in keys]) if DEFAULT in levers else np.zeros(len(keys))
        n = len(keys)
        out[name] = dict(settings=variants[name], pairs=n,
                         mf_mean=float(np.mean([by[(name, *k)]["motion_fidelity"] for k in keys])),
                         gain_mean=float(gain.mean()), gain_se=float(gain.std() / max(n - 1, 1) ** 0.5),
                         wins=int((gain > 0).sum()), vs_default_mean=float(vs_default.mean()),
                         vs_default_se=float(vs_default.std() / max(n - 1, 1) ** 0.5),
                         seconds=float(np.median([by[(name, *k)]["seconds"] for k in keys])),
                         passes=float(np.mean([by[(name, *k)]["guided_passes"] for k in keys])))
    base_s = float(np.median([by[("no guidance", *k)]["seconds"] for k in keys]))
    if DEFAULT in out:
        d = out[DEFAULT]
        for s in out.values():
            s["keeps_mf"] = s["gain_mean"] >= d["gain_mean"] - d["gain_se"]
            s["cheaper"] = s["passes"] < d["passes"]
            s["seconds_ratio"] = s["seconds"] / d["seconds"]
    return {"rows": out, "no_guidance_seconds": base_s,
            "no_guidance_mf": float(np.mean([by[("no guidance", *k)]["motion_fidelity"] for k in keys]))}


def markdown(summary: dict, meta: dict) -> str:
    title = "Guidance settings" if meta.get("set") == "tuning" else "Speed levers"
    lines = [f"{title}, {meta['model']}: {meta['pairs']} pairs ({meta['clips']} clips x {meta['seeds']} seeds, "
             f"clip seed {meta['clip_seed']}), torch threads {meta['threads']}, {meta['seconds']:.0f} s in all. "
             f"No guidance: MF {summary['no_guidance_mf']:+.3f}, {summary['no_guidance_seconds']:.2f} s / video.", "",
             "| lever | option | MF | gain over no guidance (mean ± SE) | pairs won | vs defaults (mean ± SE) | "
             "s / video (median) | x defaults | guided passes | keeps MF |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in summary["rows"].items():
        keeps = "—" if name == DEFAULT else ("yes" if s.get("keeps_mf") else "no")
        lines.append(f"| {name} | `{_flag(s['settings'])}` | {s['mf_mean']:+.3f} | {s['gain_mean']:+.3f} ± "
                     f"{s['gain_se']:.3f} | {s['wins']} / {s['pairs']} | {s['vs_default_mean']:+.3f} ± "
                     f"{s['vs_default_se']:.3f} | {s['seconds']:.2f} | {s.get('seconds_ratio', 1.0):.2f} | "
                     f"{s['passes']:.1f} | {keeps} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="assets/tiny_dit")
    p.add_argument("--clip-seed", type=int, default=1, help="1: the tuning clips; 2: held out")
    p.add_argument("--clips", type=int, default=5)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--set", choices=list(SETS), default="levers", help="speed levers, or the guidance settings")
    p.add_argument("--levers", default=None, help="comma-separated subset of the set's variants (default: all): "
                   + "; ".join(f"{k}: {', '.join(v)}" for k, v in SETS.items()))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    variants = SETS[a.set]
    levers = list(dict.fromkeys(x.strip() for x in (a.levers or ",".join(variants)).split(",") if x.strip()))
    bad = [x for x in levers if x not in variants]
    if bad or not levers:
        p.error(f"--levers: unknown {bad}; choose from {list(variants)}")
    if a.clips < 1 or a.seeds < 1 or a.threads < 1:
        p.error("--clips, --seeds and --threads must be positive")
    torch.set_num_threads(a.threads)
    from ditflow_fast.atomic import atomic_path, write_text

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    records = run(a.model, a.clip_seed, a.clips, a.seeds, levers, variants=variants)
    summary = summarise(records, levers, variants)
    meta = dict(set=a.set, model=a.model, clip_seed=a.clip_seed, clips=a.clips, seeds=a.seeds, pairs=a.clips * a.seeds,
                threads=a.threads, seconds=time.monotonic() - t0, torch=torch.__version__)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    write_text(out / "summary.json", json.dumps({"meta": meta, **summary}, indent=1))
    write_text(out / "levers.md", markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
