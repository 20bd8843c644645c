"""Motion transfer on the tiny DiT, every method through the package's DiTFlow loop, scored by Motion Fidelity.

For each reference clip of the synthetic world and each seed, the tiny model generates a *different*
object (other kind, other colour) under each row's method, starting from the same initial noise:

- ``no guidance``: plain sampling with the target condition;
- ``KV injection only``: block-0 video K/V of the noised reference injected on the guided steps;
- ``DiTFlow latent`` / ``DiTFlow emb``: AMF guidance (argmax reference AMF from the clean reference
  with the empty prompt, soft generated AMF, thresholded loss) optimising the latent / the RoPE, with
  KV injection (the loop's defaults);
- ``zero-shot``: the RoPE saved by the ``DiTFlow emb`` run of the same clip and seed, injected without
  optimisation and without KV injection into a generation of a *third* object (so the motion can only
  come from the embeddings);
- ``MOFT`` / ``SMM``: the baselines' losses on block outputs, latent optimisation, KV injection;
- ``FastVMT-style``: the AMF loss within a window around each patch (``flow_window``), gradient reuse 3,
  latent optimisation, no KV injection;
- ``RoPE-only AMF``: DiTFlow's loss optimising the RoPE tables without KV injection (RoPECraft's
  spirit: the motion enters through the positional embeddings alone).

``i2v``: image-to-video. Each generation is also given a first frame, an object of its condition at another place on
another background (:func:`~.world.first_frame_elsewhere`); the toy models are text-to-video, so every row takes it
by the loop's first-frame anchoring (docs/i2v.md), and ``first_frame_iou`` scores how well the result keeps it.

The generated object is tracked by its colour, the reference by its own, and Motion Fidelity and the
Fréchet Tracking Distance (:mod:`.metrics`) compare the two tracks. Everything runs in
:class:`ditflow_fast.guidance.loop.Guide`; this module only chooses the settings, runs the grid and writes videos
and tables.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import media
from .codec import check_codec, load_codec
from .metrics import (
    endpoint_error,
    frechet_tracking_distance,
    mask_iou,
    motion_fidelity,
    object_area,
    track_colour,
    track_condition,
)
from .model import DEFAULT_DIR, from_family_layout, load_model, to_family_layout
from .settings import ROWS, DemoSettings, model_settings
from .world import (
    COLOURS,
    FRAMES,
    KINDS,
    NULL_CONDITION,
    SIZE,
    Clip,
    colour_of,
    condition_index,
    condition_name,
    condition_parts,
    first_frame_elsewhere,
    reference_clips,
)


def other_condition(condition: int, shift: int = 1) -> int:
    """Another object for a reference's condition: kind and colour both shifted by ``shift``."""
    k, c = condition_parts(condition)
    return condition_index((k + shift) % len(KINDS), (c + shift) % len(COLOURS))


class ToyTransfer:
    """The tiny model loaded once; :meth:`generate` runs one method through the guidance loop."""

    def __init__(self, model_dir=DEFAULT_DIR, settings: DemoSettings | None = None):
        self.transformer, self.cond_embed, self.scheduler = load_model(model_dir)
        self.codec = load_codec(model_dir)
        check_codec(self.transformer, self.codec)
        self.transformer.requires_grad_(False)
        self.model_dir = str(model_dir)
        self.settings = settings or model_settings(model_dir)

    def _config(self, row: str, seed: int, inject_embeds=None):
        from ..families import family_of
        from ..guidance.config import GuidanceConfig

        s = self.settings
        frames, size = FRAMES, SIZE  # the world's clips, in pixels, as for a real model
        blocks = None if s.guidance_block is None else (s.guidance_block,)
        cog = family_of(self.transformer).name == "cogvideox"  # Wan: its own UniPC flow sampler
        # a row's own fields (FastVMT-style's gradient reuse) take precedence over the demo's settings
        fields = {"grad_reuse": s.grad_reuse, "early_stop": s.early_stop, "injection": s.kv_injection, **ROWS[row]}
        cfg = GuidanceConfig(model=self.model_dir, frames=frames, height=size, width=size, steps=s.steps,
                             guided_steps=s.guided_steps, opt_iters=s.opt_iters, lr=tuple(s.lr),
                             temperature=s.temperature, amf_rope=s.amf_rope, cfg_scale=s.cfg_scale,
                             cfg_min_t=s.cfg_min_t, dynamic_cfg=False, scheduler="ddim" if cog else "unipc", seed=seed,
                             gradient_checkpointing=row == "DiTFlow emb", dtype="float32", device="cpu",
                             guidance_blocks=blocks,
                             inject_embeds=None if inject_embeds is None else str(inject_embeds), **fields)
        # Checkpointing for the emb row only: the committed results were made so, when the processor still
        # wrote RoPE in place and emb mode needed it; it no longer does (tests/guidance/test_guidance_loop.py).
        return cfg.resolve(self.transformer, "cpu")

    def generate(self, reference: Clip, condition: int, row: str, seed: int, *, embeds_dir=None,
                 inject_embeds=None, viewer_dir=None, image: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """Video ``[F, 3, S, S]`` in [0, 1] of ``condition`` under method ``row``; and the loop's losses.
        ``image`` ``[3, S, S]`` in [0, 1]: the first frame, held by first-frame anchoring.
        ``viewer_dir``: also write the AMF viewer of the reference and the result there (as ``transfer``
        does: argmax, timestep 0, empty prompt, the guidance block), ``viewer_dir/amf/amf.html``."""
        from ..families.base import ImageCondition
        from ..guidance.loop import Guide

        if row not in ROWS:
            raise ValueError(f"row must be one of {list(ROWS)}, got {row!r}")
        with torch.no_grad():
            ref = to_family_layout(self.transformer, self.codec.encode(torch.from_numpy(reference.video)[None]))
            anchor = None if image is None else ImageCondition(anchor=to_family_layout(
                self.transformer, self.codec.encode(torch.from_numpy(image)[None, None])))
        embeds = self.cond_embed(torch.tensor([condition, NULL_CONDITION]))
        guide = Guide(self.transformer, self.scheduler, ref_latent=ref, prompt_embeds=embeds[:1],
                      negative_embeds=embeds[1:], empty_embeds=embeds[1:],
                      config=self._config(row, seed, inject_embeds), model_id=self.model_dir, image=anchor)
        res = guide.run(embeds_dir=embeds_dir, progress=False)
        self.last_result = res  # its guided passes are the demo's cost measure beside seconds
        with torch.no_grad():
            video = self.codec.decode(from_family_layout(self.transformer, res.latents[:1].float()))[0].numpy()
        if viewer_dir is not None:
            from ..viewer.transfer import write_transfer_viewer

            def uint8(v):
                return (np.clip(v.transpose(0, 2, 3, 1), 0, 1) * 255).round().astype(np.uint8)

            write_transfer_viewer(viewer_dir, guide, res.latents, uint8(reference.video), uint8(video),
                                  model=self.model_dir, video=f"toy clip ({row})", quiet=True)
        return video, res.losses


def user_clip(path, colour=None, *, frames: int = 8, size: int = 32) -> Clip:
    """A user's video (file or frame folder) as a reference: its first ``frames`` frames at ``size`` px.

    ``colour`` (r, g, b in [0, 1]) of the object to follow in it; without it the run has no reference
    track and Motion Fidelity is not computed (NaN)."""
    from ..video_io import read_video

    video = read_video(path, frames=frames, height=size, width=size)[:frames].astype(np.float32) / 255.0
    video = np.ascontiguousarray(video.transpose(0, 3, 1, 2))
    track = track_colour(video, colour) if colour is not None else np.full((frames, 2), np.nan, np.float32)
    return Clip(video=video, condition=NULL_CONDITION, kind=-1, colour=-1, track=track, velocity=(np.nan, np.nan))


def run_demo(out, *, model_dir=DEFAULT_DIR, clips: int = 5, seeds: int = 5, rows=tuple(ROWS), clip_seed: int = 0,
             settings: DemoSettings | None = None, gifs: str = "first", references: list[Clip] | None = None,
             target: int | None = None, i2v: bool = False, log=print) -> dict:
    """Run the grid ``clips x seeds x rows``; write ``results.csv``, ``summary.json``, ``summary.md``, GIFs.

    ``references``: clips to transfer from (default: ``clips`` clips of the world drawn from ``clip_seed``;
    a user's clip from :func:`user_clip`); ``target``: the condition to generate (default: another kind
    and colour than each reference's; the zero-shot row uses a third one). ``i2v``: each generation also gets a
    first frame of its object elsewhere (see the module's docstring); records gain ``first_frame_iou``.
    ``gifs``: ``"first"`` (the side-by-side GIF and per-row GIFs of the first clip and seed),
    ``"all"`` (a side-by-side GIF for every clip and seed) or ``"none"``.
    Every file written is listed in ``out/demo_outputs.txt``; a later demo into ``out`` deletes those
    files first, and no others."""
    rows = list(rows)
    for r in rows:
        if r not in ROWS:
            raise ValueError(f"unknown row {r!r}; rows are {list(ROWS)}")
    if "zero-shot" in rows and "DiTFlow emb" not in rows:
        raise ValueError("the zero-shot row injects the embeddings of the 'DiTFlow emb' row: include that row too")
    refs = references or reference_clips(clip_seed, clips, frames=FRAMES)
    if target is None and any(r.condition == NULL_CONDITION for r in refs):
        raise ValueError("a user's reference clip needs a target condition (--target)")
    out = Path(out)
    tt = ToyTransfer(model_dir, settings)
    _remove_previous_outputs(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        return _run(out, tt, written, rows, refs, model_dir=model_dir, seeds=seeds, clip_seed=clip_seed, gifs=gifs,
                    target=target, i2v=i2v, log=log)
    finally:  # an interrupted run lists what it wrote too, so the next one removes it
        _list_outputs(out, written)


# What a demo wrote into its folder; the next demo into that folder removes exactly these files first.
OUTPUTS = "demo_outputs.txt"


def _remove_previous_outputs(out: Path) -> None:
    """Delete the files the previous demo listed in ``out/OUTPUTS`` (and the folders that leaves empty),
    so none of its outputs outlives it looking current; nothing it did not write."""
    listing = out / OUTPUTS
    if not listing.is_file():
        return
    root = out.resolve()
    for line in listing.read_text().splitlines():
        path = out / line
        if line.startswith("#") or not line.strip() or root not in path.resolve().parents or not path.is_file():
            continue
        path.unlink()
        for folder in path.parents:
            if folder == out:
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: something else lives there
                break
    listing.unlink()


def _list_outputs(out: Path, written: list[Path]) -> None:
    from ..atomic import write_text

    files = sorted({p.relative_to(out).as_posix() for p in written if p.is_file()})
    write_text(out / OUTPUTS, "# written by ditflow-fast demo; the next demo into this folder deletes these first\n"
               + "".join(f"{f}\n" for f in files))


def _run(out: Path, tt: ToyTransfer, written: list[Path], rows, refs, *, model_dir, seeds, clip_seed, gifs, target,
         i2v, log) -> dict:
    from ..families import family_of

    records, t0 = [], time.monotonic()
    for ci, ref in enumerate(refs):
        user = ref.condition == NULL_CONDITION
        ref_track = ref.track if user else track_condition(ref.video, ref.condition)
        ref_area = None if user else object_area(ref.video, colour_of(ref.condition))
        first = other_condition(ref.condition, 1) if target is None else target
        zs_target = other_condition(ref.condition, 2) if target is None else other_condition(target, 1)
        start = ref.track[0] if np.isfinite(ref.track[0]).all() else (-1e3, -1e3)
        images = {c: first_frame_elsewhere((clip_seed, ci, c), c, start).video[0] for c in (first, zs_target)} \
            if i2v else {}
        for seed in range(seeds):
            videos, labels = [ref.video], ["reference" if user else f"ref {ref.name}"]
            if i2v:
                videos.append(np.repeat(images[first][None], ref.video.shape[0], axis=0))
                labels.append("given first frame")
            with tempfile.TemporaryDirectory() as emb_dir:
                for row in rows:
                    cond = zs_target if row == "zero-shot" else first
                    r0 = time.monotonic()
                    first_run = gifs != "none" and ci == 0 and seed == 0
                    viewer = out / "viewers" / row.replace(" ", "_")
                    video, losses = tt.generate(
                        ref, cond, row, seed, embeds_dir=emb_dir if row == "DiTFlow emb" else None,
                        inject_embeds=emb_dir if row == "zero-shot" else None,
                        viewer_dir=viewer if first_run else None, image=images.get(cond))
                    if first_run:
                        written.extend(viewer.rglob("*"))
                    track = track_condition(video, cond)
                    scored = np.isfinite(ref_track).any()  # a user clip without --ref-colour has no track
                    rec = dict(clip=ci, seed=seed, row=row, reference="user clip" if user else ref.name,
                               generated=condition_name(cond), ref_velocity=list(ref.velocity),
                               motion_fidelity=motion_fidelity(ref_track, track) if scored else float("nan"),
                               ftd=frechet_tracking_distance(ref_track, track, size=video.shape[-1]),
                               endpoint_error_px=endpoint_error(ref_track, track),
                               tracked_frames=int(np.isfinite(track).all(axis=1).sum()),
                               area_ratio=object_area(video, colour_of(cond)) / ref_area if ref_area else float("nan"),
                               final_loss=_final_loss(losses), seconds=round(time.monotonic() - r0, 2),
                               guided_passes=tt.last_result.passes)
                    if i2v:
                        rec["first_frame_iou"] = mask_iou(video[0], images[cond], colour_of(cond))
                    records.append(rec)
                    videos.append(video)
                    labels.append(row)
                    log(f"clip {ci} seed {seed} {row:<18} MF {_fmt(rec['motion_fidelity'], '+.3f')}  "
                        f"FTD {_fmt(rec['ftd'], '.3f')}  EPE {_fmt(rec['endpoint_error_px'], '.2f', 'px')}  "
                        f"({rec['seconds']:.1f}s)")
                    if gifs != "none" and ci == 0 and seed == 0:
                        written.append(media.save_gif(out / "videos" / f"{row.replace(' ', '_')}.gif", [video], [row]))
            if gifs == "all" or (gifs == "first" and ci == 0 and seed == 0):
                written.append(media.save_gif(out / "videos" / f"clip{ci}_seed{seed}_side_by_side.gif", videos, labels))
                if ci == 0 and seed == 0:
                    written.append(media.save_strip(out / "side_by_side_clip0_seed0.png", videos, labels))
    summary = summarise(records, rows)
    meta = dict(model=str(model_dir), family=family_of(tt.transformer).name, clips=len(refs), seeds=seeds,
                clip_seed=clip_seed, threads=torch.get_num_threads(), settings=vars(tt.settings),
                seconds=round(time.monotonic() - t0, 1))
    if i2v:
        meta["i2v"] = "first-frame anchoring (the toy models are text-to-video): docs/i2v.md"
    written.extend(_write(out, records, summary, meta))
    return {"summary": summary, "meta": meta, "records": records}


def _final_loss(losses: dict) -> float | None:
    # keyed by timestep: the smallest is the last guided step; its last optimisation iteration
    return float(losses[min(losses)][-1]) if losses else None


def _mean_std(x) -> tuple[float, float, int]:
    """Mean and std of the finite values of ``x`` (NaN, NaN when none) and how many there are."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return (float(x.mean()), float(x.std()), int(x.size)) if x.size else (float("nan"), float("nan"), 0)


def summarise(records: list[dict], rows) -> dict:
    """Per row: mean and std of Motion Fidelity, FTD (over the runs whose object was found: ``ftd_n``),
    endpoint error, area ratio; and, paired by (clip, seed) with the "no guidance" run from the same
    noise, the mean and std of the MF difference and the number of pairs the row wins, and the same for
    FTD (a pair is won when the row's FTD is lower)."""
    base = {(r["clip"], r["seed"]): r["motion_fidelity"] for r in records if r["row"] == "no guidance"}
    base_ftd = {(r["clip"], r["seed"]): r.get("ftd", float("nan")) for r in records if r["row"] == "no guidance"}
    out = {}
    for row in rows:
        rs = [r for r in records if r["row"] == row]
        if not rs:
            continue
        mf = np.array([r["motion_fidelity"] for r in rs])
        epe = np.array([r["endpoint_error_px"] for r in rs])
        epe = epe[np.isfinite(epe)]  # a run whose object was never found has no endpoint error
        out[row] = dict(n=len(rs), mf_mean=float(mf.mean()), mf_std=float(mf.std()),
                        epe_mean=float(epe.mean()) if epe.size else float("nan"),
                        epe_std=float(epe.std()) if epe.size else float("nan"),
                        tracked=float(np.mean([r["tracked_frames"] for r in rs])),
                        area_ratio=float(np.mean([r["area_ratio"] for r in rs])),
                        seconds=float(np.mean([r["seconds"] for r in rs])),
                        passes=float(np.mean([r.get("guided_passes", 0) for r in rs])))
        if "first_frame_iou" in rs[0]:
            out[row]["first_frame_iou"], _, _ = _mean_std([r["first_frame_iou"] for r in rs])
        # records written before FTD existed have none: NaN, printed n/a
        out[row]["ftd_mean"], out[row]["ftd_std"], out[row]["ftd_n"] = _mean_std(
            [r.get("ftd", float("nan")) for r in rs])
        diffs = np.array([r["motion_fidelity"] - base[(r["clip"], r["seed"])] for r in rs
                          if (r["clip"], r["seed"]) in base])
        if row != "no guidance" and diffs.size:
            out[row].update(d_mean=float(diffs.mean()), d_std=float(diffs.std()), wins=int((diffs > 0).sum()),
                            pairs=int(diffs.size))
            d_ftd = np.array([r.get("ftd", float("nan")) - base_ftd[(r["clip"], r["seed"])] for r in rs
                              if (r["clip"], r["seed"]) in base_ftd])
            d_ftd = d_ftd[np.isfinite(d_ftd)]  # a pair counts where both objects were found
            out[row]["d_ftd_mean"], out[row]["d_ftd_std"], out[row]["ftd_pairs"] = _mean_std(d_ftd)
            out[row]["ftd_wins"] = int((d_ftd < 0).sum())
    return out


def _write(out: Path, records, summary, meta) -> list[Path]:
    from ..atomic import atomic_path, write_text

    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows([{k: _na(v, "n/a") for k, v in r.items()} for r in records])
    write_text(out / "summary.json", json.dumps(_na({"meta": meta, "rows": summary}, None), indent=1))
    write_text(out / "summary.md", summary_markdown(summary, meta))
    return [out / "results.csv", out / "summary.json", out / "summary.md"]


def _na(v, missing):
    """``v`` with every NaN/inf float replaced by ``missing`` (``"n/a"`` in the CSV, ``null`` in the JSON)."""
    if isinstance(v, dict):
        return {k: _na(x, missing) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_na(x, missing) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return missing
    return v


def _fmt(v, spec: str, unit: str = "") -> str:
    """A number as ``spec``, or ``n/a`` where it cannot be computed (None, NaN: e.g. a user's clip without
    --ref-colour has no reference track, so no Motion Fidelity); never ``nan``."""
    try:
        ok = v is not None and np.isfinite(float(v))
    except (TypeError, ValueError):
        ok = False
    return f"{format(float(v), spec)}{unit}" if ok else "n/a"


def _pm(mean, std, spec_mean: str, spec_std: str) -> str:
    m = _fmt(mean, spec_mean)
    return m if m == "n/a" else f"{m} ± {_fmt(std, spec_std)}"


def _ftd_cell(s: dict) -> str:
    """FTD mean ± std, and how many runs it averages when some had no track (an object never found)."""
    cell = _pm(s.get("ftd_mean"), s.get("ftd_std"), ".3f", ".3f")
    n = s.get("ftd_n", 0)
    return cell if cell == "n/a" or n == s["n"] else f"{cell} ({n} of {s['n']} runs)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def summary_markdown(summary: dict, meta: dict) -> str:
    model = Path(meta["model"]).name if meta.get("model") else "the tiny DiT"
    family = f" ({meta['family']})" if meta.get("family") else ""
    threads = f", {_count(meta['threads'], 'thread')}" if meta.get("threads") else ""
    iou = any("first_frame_iou" in s for s in summary.values())
    i2v = f", image-to-video ({meta['i2v']})" if meta.get("i2v") else ""
    lines = [f"Motion transfer on {model}{family}{i2v}: {_count(meta['clips'], 'reference clip')} x "
             f"{_count(meta['seeds'], 'seed')} (clip seed {meta['clip_seed']}){threads}, "
             f"settings {json.dumps(meta['settings'])}, {meta['seconds']} s.",
             "", "| method | runs | Motion Fidelity (mean ± std; higher is better) | endpoint error px (mean ± std) | "
             "FTD (mean ± std; lower is better) | frames tracked | object area / reference | s / run | "
             "guided passes / run |" + (" first-frame IoU (mean) |" if iou else ""),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if iou else "")]
    for row, s in summary.items():
        lines.append(f"| {row} | {s['n']} | {_pm(s['mf_mean'], s['mf_std'], '+.3f', '.3f')} | "
                     f"{_pm(s['epe_mean'], s['epe_std'], '.2f', '.2f')} | {_ftd_cell(s)} | "
                     f"{_fmt(s['tracked'], '.1f')} | "
                     f"{_fmt(s['area_ratio'], '.2f')} | {s['seconds']:.1f} | {s.get('passes', 0):.1f} |"
                     + (f" {_fmt(s.get('first_frame_iou'), '.3f')} |" if iou else ""))
    paired = [(row, s) for row, s in summary.items() if "d_mean" in s]
    if paired:
        lines += ["", "Paired with *no guidance* (same clip, seed and initial noise): Motion Fidelity difference "
                  "(higher is better) and FTD difference (lower is better; a pair is won when the row's FTD is lower).",
                  "", "| method | MF - MF(no guidance) (mean ± std) | standard error | pairs won | "
                  "FTD - FTD(no guidance) (mean ± std; lower is better) | standard error | FTD pairs won |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row, s in paired:
            se = s["d_std"] / max(s["pairs"] - 1, 1) ** 0.5
            n_ftd = s.get("ftd_pairs", 0)
            se_ftd = s["d_ftd_std"] / max(n_ftd - 1, 1) ** 0.5 if n_ftd else float("nan")
            ftd_won = f"{s['ftd_wins']} / {n_ftd}" if n_ftd else "n/a"
            d_ftd = _pm(s.get("d_ftd_mean"), s.get("d_ftd_std"), "+.3f", ".3f")
            lines.append(f"| {row} | {_pm(s['d_mean'], s['d_std'], '+.3f', '.3f')} | {_fmt(se, '.3f')} | "
                         f"{s['wins']} / {s['pairs']} | {d_ftd} | {_fmt(se_ftd, '.3f')} | {ftd_won} |")
    return "\n".join(lines) + "\n"
