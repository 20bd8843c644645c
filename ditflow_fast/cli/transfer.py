"""``ditflow-fast transfer``: DiTFlow motion transfer from a reference video to a new prompt.

Any supported model family (CogVideoX, Wan2.1/2.2; ``ditflow_fast.families``). Writes into
``--out``: ``state.safetensors`` (after every denoising step, keyed by everything that determines
the result: a rerun of the same command resumes from it, any other is refused, naming what
differs), ``embeds/`` (``--opt-mode emb``: one file per guided timestep, for ``--inject-embeds``),
``result.mp4`` / ``result.gif`` / ``result_frames/``, and last ``config.json`` (the run record:
resolved settings, inputs, losses, time). Every file is written atomically; a refused command
leaves the folder as it was; two runs into one folder at once: the second is refused (a lock).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from .transfer_checks import RESULT_NAMES, check_device, check_out, has_second_expert, model_configs, with_config

# measured on the toy world (docs/toyworld.md, "Speed levers"): a reused gradient lets the embeddings drift
EMB_REUSE_WARNING = ("warning: --grad-reuse with --opt-mode emb: on the toy CogVideoX model the reused gradients "
                     "let the optimised RoPE drift until the object vanished (docs/toyworld.md, 'Speed levers'); "
                     "it was measured to keep Motion Fidelity with --opt-mode latent only")


def add_transfer_parser(sub) -> None:
    p = sub.add_parser("transfer", help="DiTFlow motion transfer (reference video + prompt -> video)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--video", help="reference: a video file (mp4, ...) or a folder of frames")
    p.add_argument("--prompt", help="text of the video to generate")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--prompt-embeds", metavar="FILE",
                   help="safetensors with 'prompt' [1, L, D] (and optional 'negative', 'empty') instead of T5")
    p.add_argument("--model", default="THUDM/CogVideoX-5b", help="hub id or local diffusers folder")
    p.add_argument("--frames", type=int, help="video frames taken from the reference and generated (default: the "
                   "model's: 24 for CogVideoX, 81 for Wan, 9 for tiny test models; CogVideoX gives exactly 8k or "
                   "8k+1, Wan 4k+1)")
    p.add_argument("--height", type=int, help="default: the model's (480 for both families)")
    p.add_argument("--width", type=int, help="default: the model's (720 CogVideoX, 832 Wan)")
    p.add_argument("--opt-mode", choices=("latent", "emb"), default="latent")
    p.add_argument("--loss", choices=("flow", "moft", "smm"), default="flow")
    p.add_argument("--no-guidance", action="store_true", help="no optimisation (injection still applies)")
    p.add_argument("--no-injection", action="store_true", help="no K/V injection at block 0")
    p.add_argument("--inject-embeds", metavar="DIR", help="zero-shot: reuse embeddings saved by an emb run")
    p.add_argument("--guidance-block", type=int, action="append",
                   help="default: the model's (CogVideoX 20 (5B) / 15 (2B), Wan 14 (1.3B) / 19 (14B)); repeatable")
    p.add_argument("--cfg", type=float,
                   help="classifier-free guidance scale (default: the model's, 7 CogVideoX, 5 Wan)")
    p.add_argument("--flow-shift", type=float, help="Wan: the sampler's flow shift (default: the model folder's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's, 50; Wan2.2 A14B 40)")
    p.add_argument("--guided-steps", type=int, default=10)
    p.add_argument("--opt-iters", type=int, default=5, help="Adam iterations per guided step")
    p.add_argument("--grad-reuse", type=int, default=1, metavar="K",
                   help="speed lever: one real forward+backward every K-th Adam iteration, its gradient reused "
                        "in between (1: every iteration, the paper's; FastVMT uses 3). See docs/guidance.md")
    p.add_argument("--early-stop", type=float, default=0.0, metavar="TOL",
                   help="speed lever: end a guided step's iterations once its AMF loss falls by less than TOL "
                        "(relative) from one pass to the next (0: off, the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device")
    p.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing")
    p.add_argument("--cpu-offload", action="store_true", help="keep the VAE on the CPU except when it runs")
    p.add_argument("--offload", choices=("none", "model", "group"), default="none",
                   help="model: only the running component on the GPU; group: diffusers' block-level group "
                        "offloading of the transformer (smallest GPU memory)")
    p.add_argument("--offload-activations", action=argparse.BooleanOptionalAction, default=None,
                   help="keep what the guided forward saves for its backward (the checkpointed block inputs) in "
                        "host memory (torch's save_on_cpu; exact). Default: on with --offload group")
    p.add_argument("--ffn-chunks", type=int, metavar="N",
                   help="Wan: run the guided backward's feed-forward in N token slices, each checkpointed "
                        "(exact; default: automatic, enough slices for 256 MiB per [slice, ffn_dim]; 0/1: off)")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--out", default="ditflow_out")
    p.add_argument("--format", choices=("mp4", "gif", "frames"), default="mp4")
    p.add_argument("--fps", type=int, default=8, help="frames per second of the mp4/gif (> 0)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved state in --out and start over")
    p.add_argument("--dry-run", action="store_true", help="print the predicted peak GPU memory and exit")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest for tiny models on busy CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ref-cache", metavar="DIR", help="cache the reference latent and its guidance targets in DIR "
                   "(safetensors keyed by a hash of their inputs), shared by every run on the same reference")
    p.set_defaults(func=run_transfer)


def _config(a):
    from ..guidance.config import GuidanceConfig

    return GuidanceConfig(
        model=a.model, frames=a.frames, height=a.height, width=a.width, opt_mode=a.opt_mode, loss=a.loss,
        guidance=not a.no_guidance, injection=not a.no_injection, inject_embeds=a.inject_embeds,
        guidance_blocks=tuple(a.guidance_block) if a.guidance_block else None, steps=a.steps,
        guided_steps=a.guided_steps, opt_iters=a.opt_iters, seed=a.seed, dtype=a.dtype, device=a.device,
        grad_reuse=getattr(a, "grad_reuse", 1), early_stop=getattr(a, "early_stop", 0.0),
        gradient_checkpointing=not a.no_checkpointing, cpu_offload=a.cpu_offload, vae_tiling=a.vae_tiling,
        cfg_scale=a.cfg, flow_shift=a.flow_shift, offload_activations=_offload_activations(a),
        ffn_chunks=getattr(a, "ffn_chunks", None),
    ).validate()


def _offload_activations(a) -> bool:
    """``--offload-activations`` as given, else on exactly with ``--offload group``."""
    chosen = getattr(a, "offload_activations", None)
    if chosen is None:
        return getattr(a, "offload", "none") == "group" and not getattr(a, "no_checkpointing", False)
    return bool(chosen)


def _lock(out: Path):
    """An exclusive lock on the ``--out`` folder itself (no lock file: the folder stays as it was)."""
    from ..atomic import dir_lock

    return dir_lock(out, "ditflow-fast transfer")


def run_transfer(a, loader=None) -> int:
    """One transfer from parsed arguments ``a``. ``loader(family, ref, dtype) -> components`` (default
    ``family.load``) lets a long-lived worker (``ditflow-fast batch``) hand over a model it holds."""
    # Cheap checks first: nothing is loaded, decoded or written before every argument is known good.
    if a.fps <= 0:
        raise ValueError(f"--fps must be positive, got {a.fps}")
    if a.threads is not None and a.threads < 1:
        raise ValueError(f"--threads must be positive, got {a.threads}")
    if a.offload == "group" and a.no_checkpointing:
        raise ValueError("--offload group needs gradient checkpointing (drop --no-checkpointing): the backward of a "
                         "block reads weights that group offloading has sent back to the CPU")
    cfg = _config(a)
    if cfg.grad_reuse > 1 and cfg.opt_mode == "emb" and cfg.guidance and not cfg.inject_embeds:
        print(EMB_REUSE_WARNING, file=sys.stderr)
    if a.dry_run:
        from .dry_run import dry_run

        return dry_run(a.model, cfg, a.offload)
    if not a.video:
        raise ValueError("--video is required")
    if not a.prompt and not a.prompt_embeds:
        raise ValueError("--prompt is required (or --prompt-embeds FILE)")
    dev = check_device(a.device)
    out = check_out(a)
    if getattr(a, "ref_cache", None):
        from ..atomic import check_writable

        check_writable(Path(a.ref_cache).expanduser(), option="--ref-cache", folder=True)
    from ..families import detect, resolve_model_ref

    fam = detect(a.model)  # milliseconds for a mistyped path: nothing path-like goes to the hub
    ref, local = resolve_model_ref(a.model)
    tcfg, vcfg = model_configs(fam, ref)
    if has_second_expert(fam, ref):  # Wan2.2 A14B: its defaults (steps, CFG per expert) differ from 14B's
        tcfg = {**tcfg, "experts": 2}
    cfg = cfg.resolve(tcfg, device=dev, family=fam)
    import torch

    from ..guidance import run_key as rk
    from ..guidance.loop import STATE_FILE, Guide, differing, read_state
    from ..video_io import read_video, write_video

    t0 = time.time()
    frames = read_video(a.video, frames=cfg.frames, height=cfg.height, width=cfg.width)
    fam.geometry(with_config(tcfg), with_config(vcfg), cfg.frames, cfg.height, cfg.width)
    if a.prompt_embeds is not None:
        from ..guidance.models import read_prompt_file

        read_prompt_file(Path(a.prompt_embeds))
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    parts = {"settings": cfg.run_key(exclude=("dtype",)), "video": rk.video_digest(frames),
             "prompts": rk.prompts_digest(a.prompt, a.negative_prompt, a.prompt_embeds),
             "model": rk.model_digest(ref, local), "dtype": cfg.dtype}
    key = rk.key_of(parts)
    state = out / STATE_FILE
    if state.exists() and not a.fresh:
        meta, _ = read_state(state)  # a damaged state: an error saying to use --fresh
        if meta.get("run_key") != key:
            raise ValueError(f"--out {out}: holds a run with other {differing(meta, parts)}; use --fresh to "
                             "start over there, or another --out")
    created = not out.exists()
    lock = _lock(out)
    ok = False
    try:
        rc = _run(a, fam, ref, cfg, frames, parts, key, out, t0, torch, Guide, write_video, loader)
        ok = True
        return rc
    finally:
        os.close(lock)
        if created and not ok and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refusal after the lock (e.g. a prompt file of the wrong width) leaves no trace


def _run(a, fam, ref, cfg, frames, parts, key, out, t0, torch, Guide, write_video, loader) -> int:  # noqa: N803
    from ..atomic import write_json
    from ..families.prompts import prompt_embeddings
    from ..guidance.loop import STATE_FILE

    dtype, device = cfg.torch_dtype, torch.device(cfg.device)
    comps = fam.load(ref, dtype) if loader is None else loader(fam, ref, dtype)
    transformer, vae = comps["transformer"], comps["vae"]
    if cfg.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if cfg.vae_tiling:
        vae.enable_tiling()
    texts = prompt_embeddings(ref, a.prompt, a.negative_prompt, a.prompt_embeds, transformer,
                              device=device, dtype=dtype, family=fam)
    vae.to(device)

    def encode():
        return fam.encode_video(vae, frames, device=device, dtype=next(vae.parameters()).dtype, seed=cfg.seed)
    cache = None
    if getattr(a, "ref_cache", None):
        from ..guidance.ref_cache import RefCache

        cache = RefCache(a.ref_cache, model=parts["model"])
        ref_latent = cache.latent({"video": parts["video"], "family": fam.name, "dtype": cfg.dtype,
                                   "device": device.type, "seed": cfg.seed, "size": [cfg.frames, cfg.height, cfg.width],
                                   "vae_tiling": cfg.vae_tiling, "vae_slicing": cfg.vae_slicing}, encode, device)
    else:
        ref_latent = encode()
    if cfg.cpu_offload:
        vae.to("cpu")
    _place(a.offload, comps, device, cfg.gradient_checkpointing)
    guide = Guide(transformer, comps["scheduler_config"], ref_latent=ref_latent, prompt_embeds=texts["prompt"],
                  negative_embeds=texts["negative"], empty_embeds=texts["empty"], config=cfg, model_id=a.model,
                  family=fam, transformer_2=comps["transformer_2"], boundary_ratio=comps["boundary_ratio"],
                  run_key=key, key_parts=parts, ref_cache=cache)
    embeds_dir = out / "embeds" if cfg.opt_mode == "emb" and cfg.inject_embeds is None and cfg.guidance else None
    if a.fresh:  # only now that every check has passed (model, prompts, set-up): the old run goes
        (out / STATE_FILE).unlink(missing_ok=True)
        (out / "config.json").unlink(missing_ok=True)
        shutil.rmtree(out / "embeds", ignore_errors=True)
    elif (out / STATE_FILE).exists() and not a.quiet:
        print(f"resuming from {out / STATE_FILE}", file=sys.stderr)
    res = guide.run(state_dir=out, embeds_dir=embeds_dir, progress=not a.quiet)
    if cfg.cpu_offload and a.offload == "none":
        for name in ("transformer", "transformer_2"):
            if comps[name] is not None:
                comps[name].to("cpu")
    if a.offload == "none":
        vae.to(device)  # otherwise the offload hooks bring it in for decoding
    video = fam.decode_latents(vae, res.latents)
    if video.shape[0] != cfg.frames:  # geometry() admits only counts the VAE gives exactly
        raise RuntimeError(f"the VAE decoded {video.shape[0]} frames, not the {cfg.frames} asked for")
    path = write_video(video, out / RESULT_NAMES[a.format], fmt=a.format, fps=a.fps)
    from ..viewer.transfer import write_transfer_viewer  # out/amf/: reference vs result AMF (docs/viewer.md)

    write_transfer_viewer(out, guide, res.latents, frames, video, model=a.model, video=a.video, offload=a.offload)
    record = {"family": fam.name, "config": cfg.to_dict(), "video": str(a.video), "prompt": a.prompt,
              "prompt_embeds": a.prompt_embeds, "negative_prompt": a.negative_prompt, "run_key": key,
              "run_key_parts": parts, "torch": torch.__version__, "result": str(path),
              "resumed_from_step": res.resumed_from, "seconds": round(time.time() - t0, 2),
              "guided_passes": res.passes,
              "losses": {str(k): v for k, v in res.losses.items()},
              "embeddings": str(embeds_dir) if embeds_dir is not None else None,
              "ref_cache": cache.summary() if cache is not None else None}
    write_json(out / "config.json", record)
    print(f"wrote {path} ({video.shape[0]} frames {video.shape[2]}x{video.shape[1]}) in {record['seconds']} s")
    return 0


def _place(offload: str, comps: dict, device, checkpointing: bool) -> None:
    """Components where ``--offload`` wants them, through diffusers'/accelerate's own hooks
    (``families/offload.py``); with two experts only the first is on the device, the loop swaps them."""
    from ..families.offload import apply_offload

    if offload == "none":
        for name in ("transformer", "transformer_2"):
            if comps[name] is not None:
                comps[name].to(device if name == "transformer" else "cpu")
        return
    apply_offload({k: comps[k] for k in ("transformer", "transformer_2", "vae")}, offload, device,
                  checkpointing=checkpointing)
