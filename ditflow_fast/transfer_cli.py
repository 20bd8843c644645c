"""``ditflow-fast transfer``: DiTFlow motion transfer from a reference video to a new prompt.

Writes into ``--out``: ``config.json`` (the resolved settings), ``state.safetensors`` (after every
denoising step; a rerun with the same settings resumes from it), ``embeds/`` (``--opt-mode emb``:
one file per guided timestep, for ``--inject-embeds``), and ``result.mp4`` / ``result.gif`` /
``result_frames/``. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def add_transfer_parser(sub) -> None:
    p = sub.add_parser("transfer", help="DiTFlow motion transfer (reference video + prompt -> video)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--video", help="reference: a video file (mp4, ...) or a folder of frames")
    p.add_argument("--prompt", help="text of the video to generate")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--prompt-embeds", metavar="FILE",
                   help="safetensors with 'prompt' [1, L, D] (and optional 'negative', 'empty') instead of T5")
    p.add_argument("--model", default="THUDM/CogVideoX-5b", help="hub id or local diffusers folder")
    p.add_argument("--frames", type=int, default=24, help="video frames taken from the reference")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=720)
    p.add_argument("--opt-mode", choices=("latent", "emb"), default="latent")
    p.add_argument("--loss", choices=("flow", "moft", "smm"), default="flow")
    p.add_argument("--no-guidance", action="store_true", help="no optimisation (injection still applies)")
    p.add_argument("--no-injection", action="store_true", help="no K/V injection at block 0")
    p.add_argument("--inject-embeds", metavar="DIR", help="zero-shot: reuse embeddings saved by an emb run")
    p.add_argument("--guidance-block", type=int, action="append", help="default 20 (5B) / 15 (2B); repeatable")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guided-steps", type=int, default=10)
    p.add_argument("--opt-iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device")
    p.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing")
    p.add_argument("--cpu-offload", action="store_true", help="keep the VAE on the CPU except when it runs")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--out", default="ditflow_out")
    p.add_argument("--format", choices=("mp4", "gif", "frames"), default="mp4")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--fresh", action="store_true", help="ignore a saved state in --out and start over")
    p.add_argument("--dry-run", action="store_true", help="print the predicted peak GPU memory and exit")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest for tiny models on busy CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_transfer)


def _config(a):
    from .guidance.config import GuidanceConfig

    return GuidanceConfig(
        model=a.model, frames=a.frames, height=a.height, width=a.width, opt_mode=a.opt_mode, loss=a.loss,
        guidance=not a.no_guidance, injection=not a.no_injection, inject_embeds=a.inject_embeds,
        guidance_blocks=tuple(a.guidance_block) if a.guidance_block else None, steps=a.steps,
        guided_steps=a.guided_steps, opt_iters=a.opt_iters, seed=a.seed, dtype=a.dtype, device=a.device,
        gradient_checkpointing=not a.no_checkpointing, cpu_offload=a.cpu_offload, vae_tiling=a.vae_tiling,
    ).validate()


def _dry_run(a, cfg) -> int:
    from .guidance import memory

    mc = memory.config_for(a.model)
    rope = mc.get("use_rotary_positional_embeddings", False)
    n = mc.get("num_layers", 30)
    block = max(cfg.guidance_blocks) if cfg.guidance_blocks else ((20 if rope else 15) if n > 20 else n // 2)
    b = 4 if (cfg.dtype or "bfloat16") == "float32" else 2
    est = memory.estimate(mc, frames=cfg.frames, height=cfg.height, width=cfg.width, guidance_block=block,
                          bytes_per_elem=b, opt_mode=cfg.opt_mode, checkpointing=cfg.gradient_checkpointing,
                          vae_offload=cfg.cpu_offload)
    print(f"{a.model}: {cfg.frames} frames at {cfg.height}x{cfg.width}, guidance block {block}, {b}-byte "
          f"elements, opt-mode {cfg.opt_mode}, checkpointing {'on' if cfg.gradient_checkpointing else 'off'}")
    print(est.table())
    print("(derivation: docs/memory.md; the T5 encoder runs before the loop and is offloaded)")
    return 0


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_transfer(a) -> int:
    cfg = _config(a)
    if a.dry_run:
        return _dry_run(a, cfg)
    if not a.video:
        raise ValueError("--video is required")
    if not a.prompt and not a.prompt_embeds:
        raise ValueError("--prompt is required (or --prompt-embeds FILE)")
    import torch

    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads must be positive, got {a.threads}")
        torch.set_num_threads(a.threads)
    from .guidance import models
    from .guidance.loop import STATE_FILE, Guide
    from .video_io import read_video, write_video

    t0 = time.time()
    frames = read_video(a.video, frames=cfg.frames, height=cfg.height, width=cfg.width)
    # Resolve the dtype from the config before loading, so weights are loaded in it directly.
    from .guidance import memory

    models.check_model_ref(a.model)
    rope = memory.config_for(a.model).get("use_rotary_positional_embeddings", False) if cfg.dtype is None else None
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    want = cfg.dtype or ("float32" if dev.type == "cpu" else ("bfloat16" if rope else "float16"))
    transformer, vae, sched_cfg = models.load_components(a.model, getattr(torch, want))
    cfg = cfg.resolve(transformer, device=dev)
    dtype, device = cfg.torch_dtype, torch.device(cfg.device)
    models.check_size(transformer, vae, cfg.frames, cfg.height, cfg.width)
    if cfg.vae_slicing:
        vae.enable_slicing()
    if cfg.vae_tiling:
        vae.enable_tiling()
    texts = models.prompt_embeddings(a.model, a.prompt, a.negative_prompt, a.prompt_embeds, transformer,
                                     device=device, dtype=dtype)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.fresh:
        (out / STATE_FILE).unlink(missing_ok=True)
    record = {"config": cfg.to_dict(), "video": str(a.video), "prompt": a.prompt, "prompt_embeds": a.prompt_embeds,
              "negative_prompt": a.negative_prompt, "run_key": cfg.run_key(), "torch": torch.__version__}
    _write_json(out / "config.json", record)

    vae.to(device)
    ref_latent = models.encode_video(vae, frames, device=device, dtype=dtype, seed=cfg.seed)
    if cfg.cpu_offload:
        vae.to("cpu")
    transformer.to(device)
    guide = Guide(transformer, models.make_scheduler(sched_cfg, cfg.scheduler), ref_latent=ref_latent,
                  prompt_embeds=texts["prompt"], negative_embeds=texts["negative"], empty_embeds=texts["empty"],
                  config=cfg, model_id=a.model)
    embeds_dir = out / "embeds" if cfg.opt_mode == "emb" and cfg.inject_embeds is None and cfg.guidance else None
    if (out / STATE_FILE).exists() and not a.quiet:
        print(f"resuming from {out / STATE_FILE}", file=sys.stderr)
    res = guide.run(state_dir=out, embeds_dir=embeds_dir, progress=not a.quiet)
    if cfg.cpu_offload:
        transformer.to("cpu")
    vae.to(device)
    video = models.decode_latents(vae, res.latents)
    name = {"mp4": "result.mp4", "gif": "result.gif", "frames": "result_frames"}[a.format]
    path = write_video(video, out / name, fmt=a.format, fps=a.fps)
    record.update(result=str(path), resumed_from_step=res.resumed_from, seconds=round(time.time() - t0, 2),
                  losses={str(k): v for k, v in res.losses.items()},
                  embeddings=str(embeds_dir) if embeds_dir is not None else None)
    _write_json(out / "config.json", record)
    print(f"wrote {path} ({video.shape[0]} frames {video.shape[2]}x{video.shape[1]}) in {record['seconds']} s")
    return 0
