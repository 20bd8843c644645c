"""One motion transfer: a reference video's motion, a new prompt, a model; in memory or into a resumable folder.

Into a folder (``out=DIR``) it writes what ``ditflow-fast transfer`` writes: ``state.safetensors`` after every
denoising step, keyed by everything that determines the result (the same call resumes from it, any other is
refused, naming what differs), ``embeds/`` (emb mode), the result, the AMF viewer ``amf/`` and last
``config.json``. Every file is written atomically; a refused call leaves the folder as it was; two runs into
one folder at once: the second is refused (a lock on the folder).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from .checks import RESULT_NAMES
from .held import HeldModel
from .options import TransferOptions, python_names
from .result import TransferResult


def transfer(model, video, *, prompt=None, negative_prompt=None, prompt_embeds=None, image=None, out=None,
             progress=None, **options) -> TransferResult:
    """DiTFlow motion transfer: the motion of ``video``, a new video of ``prompt``.

    ``model``: a loaded diffusers pipeline of a supported family (used as its caller set it up), a
    :class:`HeldModel`, or a hub id / local folder (loaded as ``ditflow-fast transfer`` loads it).
    ``video``: a path (video file or frame folder), or frames, numpy or torch uint8 ``[F, H, W, 3]``.
    ``prompt_embeds``: a safetensors file as ``--prompt-embeds`` takes, instead of ``prompt``.
    ``image``: image-to-video, the first frame of the new video (a path, a PIL image or ``uint8 [H, W, 3]``);
    an I2V model needs it, a text-to-video model is anchored to it (weaker; docs/i2v.md).
    ``out``: None works in memory and writes nothing; a folder gives the command's resumable run folder.
    ``progress(step, total, loss)`` after each denoising step. ``options``: ``ditflow-fast transfer``'s
    options with underscores (``frames``, ``steps``, ``guided_steps``, ``opt_iters``, ``opt_mode``, ``lr``,
    ``seed``, ``guidance_block``, ``inject_embeds``, ``grad_reuse``, ``offload``, ...; ``TransferOptions``
    lists them), checked by its rules: a bad one raises ``ValueError``/``TypeError`` naming it.
    """
    try:
        opts = TransferOptions.from_kwargs(**options)
        return run(model, video, opts, prompt=prompt, negative_prompt=negative_prompt or "",
                   prompt_embeds=prompt_embeds, image=image, out=out, progress=progress, bar=False)
    except (ValueError, TypeError) as exc:
        exc.args = (python_names(str(exc)),) + exc.args[1:]
        raise


def run(model, video, opts: TransferOptions, *, prompt=None, negative_prompt: str = "", prompt_embeds=None,
        image=None, out=None, progress=None, bar: bool = True) -> TransferResult:
    """:func:`transfer` with checked options and the command line's messages (``--flags``); ``bar``: tqdm's bar."""
    from .checks import check_device, check_inject, check_out

    t0 = time.time()
    if video is None or (isinstance(video, str) and not video):
        raise ValueError("--video is required")
    if not prompt and prompt_embeds is None:
        raise ValueError("--prompt is required (or --prompt-embeds FILE)")
    held = model if isinstance(model, HeldModel) else (
        HeldModel(model) if isinstance(model, (str, os.PathLike)) else HeldModel.from_pipeline(model))
    if held.pipeline is not None and (opts.offload != "none" or opts.cpu_offload):
        raise ValueError("--offload/--cpu-offload: a pipeline keeps the placement and offload hooks its caller gave "
                         "it; set them on the pipeline (enable_model_cpu_offload, enable_group_offload, ...)")
    dev = check_device(opts.device) if held.pipeline is None or opts.device else _pipeline_device(held)
    out = check_out(out, opts.format) if out is not None else None
    check_inject(opts.inject_embeds, out, opts.fresh)
    if opts.ref_cache:
        from ..atomic import check_writable

        check_writable(Path(opts.ref_cache).expanduser(), option="--ref-cache", folder=True)
    fam = held.family
    tcfg, vcfg = held.configs
    cfg = opts.guidance_config(held.name)
    if held.pipeline is not None:
        own = str(held.dtype).removeprefix("torch.")
        if opts.dtype not in (None, own):
            raise ValueError(f"--dtype {opts.dtype}: the pipeline's transformer is {own}; convert the pipeline "
                             "(pipe.to(dtype)) or leave dtype out")
        cfg.dtype = own
    cfg = cfg.resolve(tcfg, device=dev, family=fam)
    if opts.grad_reuse > 1 and cfg.opt_mode == "emb" and cfg.guidance and not cfg.inject_embeds:
        print(EMB_REUSE_WARNING, file=sys.stderr)
    frames = _reference_frames(video, cfg)
    image = _image(image, fam, tcfg, cfg)
    from .checks import with_config

    fam.geometry(with_config(tcfg), with_config(vcfg), cfg.frames, cfg.height, cfg.width)
    if prompt_embeds is not None:
        from ..families.prompts import read_prompt_file

        read_prompt_file(Path(prompt_embeds))
    elif held.pipeline is None:  # a folder without its text encoder is refused before the transformer loads
        from ..families.text_encoders import check_text_folders

        check_text_folders(held.ref, fam.text_folders, "the text encoder", "or pass --prompt-embeds FILE")
    import torch

    from ..guidance import run_key as rk

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    parts = {"settings": cfg.run_key(exclude=("dtype",)), "video": rk.video_digest(frames),
             "prompts": rk.prompts_digest(prompt, negative_prompt, prompt_embeds), "model": held.digest(),
             "dtype": cfg.dtype}
    if image is not None:
        parts["image"] = rk.video_digest(image[None])
    key = rk.key_of(parts)
    try:
        return _into(held, cfg, opts, frames, parts, key, out, t0, prompt, negative_prompt, prompt_embeds, video,
                     progress, bar, image)
    finally:
        held.restore()  # a caller's pipeline goes back as it came
        if held is not model:
            held.release()  # loaded for this call only


def _into(held, cfg, opts, frames, parts, key, out, t0, prompt, negative_prompt, prompt_embeds, video, progress,
          bar, image) -> TransferResult:
    """The run in memory, or into ``out`` under its lock after the saved state's key is checked."""
    if out is None:
        return _execute(held, cfg, opts, frames, parts, key, None, t0, prompt, negative_prompt, prompt_embeds,
                        video, progress, bar, image)
    from ..guidance.loop import STATE_FILE, differing, read_state

    state = out / STATE_FILE
    if state.exists() and not opts.fresh:
        meta, _ = read_state(state)  # a damaged state: an error saying to use --fresh
        if meta.get("run_key") != key:
            raise ValueError(f"--out {out}: holds a run with other {differing(meta, parts)}; use --fresh to "
                             "start over there, or another --out")
    from ..atomic import dir_lock

    made = [p for p in (out, *out.parents) if not p.exists()]  # the lock creates them, out first to remove
    lock = dir_lock(out, "ditflow-fast transfer")
    ok = False
    try:
        res = _execute(held, cfg, opts, frames, parts, key, out, t0, prompt, negative_prompt, prompt_embeds,
                       video, progress, bar, image)
        ok = True
        return res
    finally:
        os.close(lock)
        for folder in made if not ok else ():  # a refusal after the lock (a prompt file of the wrong width, ...)
            if not folder.is_dir() or any(folder.iterdir()):  # leaves no trace, and nothing else goes
                break
            folder.rmdir()


EMB_REUSE_WARNING = ("warning: --grad-reuse with --opt-mode emb: on the toy CogVideoX model the reused gradients "
                     "let the optimised RoPE drift until the object vanished (docs/toyworld.md, 'Speed levers'); "
                     "it was measured to keep Motion Fidelity with --opt-mode latent only")


ANCHOR_NOTE = ("note: {model} is a text-to-video model: --image holds the first latent frame to the image's latent, "
               "noised to each step's level (training-free first-frame anchoring; weaker than an image-to-video "
               "model: docs/i2v.md)")


def _image(image, fam, tcfg: dict, cfg):
    """The image at the run's size, or None; an I2V model without one is refused before anything is loaded."""
    if image is None:
        if fam.image_model(tcfg):
            raise ValueError(f"--image is required: {cfg.model} is an image-to-video model")
        return None
    from ..video_io import read_image

    return read_image(image, cfg.height, cfg.width)


def _conditioning(cond) -> str | None:
    """How the run took its image, for the record."""
    if cond is None:
        return None
    if cond.anchor is None:
        return "image inputs of the image-to-video model"
    return "first-frame anchoring (noised to each step)" if cond.anchor_noised else "clean first frame"


def _pipeline_device(held: HeldModel):
    import torch

    dev = getattr(held.pipeline, "_execution_device", None)
    return torch.device(dev) if dev is not None else next(held.components["transformer"].parameters()).device


def _reference_frames(video, cfg):
    from ..video_io import frames_from_array, read_video

    if isinstance(video, (str, os.PathLike)):
        return read_video(video, frames=cfg.frames, height=cfg.height, width=cfg.width)
    return frames_from_array(video, cfg.frames, cfg.height, cfg.width)


def _execute(held, cfg, opts, frames, parts, key, out, t0, prompt, negative, embeds_file, video, progress,
             bar, image) -> TransferResult:
    import torch

    from ..guidance.loop import STATE_FILE, Guide

    dtype, device = cfg.torch_dtype, torch.device(cfg.device)
    comps = held.load(dtype)
    transformer, vae = comps["transformer"], comps["vae"]
    if cfg.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if cfg.vae_tiling:
        vae.enable_tiling()
    texts = _texts(held, prompt, negative, embeds_file, device, dtype)
    placed = held.pipeline is None
    if placed:
        vae.to(device)
    cache = None

    def encode():
        return held.family.encode_video(vae, frames, device=device, dtype=next(vae.parameters()).dtype,
                                        seed=cfg.seed)
    if opts.ref_cache:
        from ..guidance.ref_cache import RefCache

        cache = RefCache(opts.ref_cache, model=parts["model"])
        ref_latent = cache.latent({"video": parts["video"], "family": held.family.name, "dtype": cfg.dtype,
                                   "device": device.type, "seed": cfg.seed, "size": [cfg.frames, cfg.height, cfg.width],
                                   "vae_tiling": cfg.vae_tiling, "vae_slicing": cfg.vae_slicing}, encode, device)
    else:
        ref_latent = encode()
    conds = {}
    if image is not None:  # the generation's first frame, and the reference's own for the passes over it
        conds = {k: held.family.image_condition(comps, img, device=device, dtype=dtype, seed=cfg.seed,
                                                frames=cfg.frames)
                 for k, img in (("image", image), ("ref_image", frames[0]))}
        if conds["image"].anchor is not None and conds["image"].anchor_noised:
            print(ANCHOR_NOTE.format(model=held.name), file=sys.stderr)
    if placed and cfg.cpu_offload:
        vae.to("cpu")
    if placed:
        _place(opts.offload, comps, device, cfg.gradient_checkpointing)
    guide = Guide(transformer, comps["scheduler_config"], ref_latent=ref_latent, prompt_embeds=texts["prompt"],
                  negative_embeds=texts["negative"], empty_embeds=texts["empty"], config=cfg, model_id=held.name,
                  family=held.family, transformer_2=comps["transformer_2"], boundary_ratio=comps["boundary_ratio"],
                  run_key=key, key_parts=parts, ref_cache=cache, **conds)
    embeds_dir = (out / "embeds" if out is not None and cfg.opt_mode == "emb" and cfg.inject_embeds is None
                  and cfg.guidance else None)
    guide.injected_embeddings()  # refused embeddings must not cost the old run below
    if out is not None and opts.fresh:  # only now that every check has passed: the old run goes
        (out / STATE_FILE).unlink(missing_ok=True)
        (out / "config.json").unlink(missing_ok=True)
        shutil.rmtree(out / "embeds", ignore_errors=True)
    elif out is not None and (out / STATE_FILE).exists() and bar:
        print(f"resuming from {out / STATE_FILE}", file=sys.stderr)
    res = guide.run(state_dir=out, embeds_dir=embeds_dir, progress=bar, on_step=progress)
    if placed and cfg.cpu_offload and opts.offload == "none":
        for name in ("transformer", "transformer_2"):
            if comps[name] is not None:
                comps[name].to("cpu")
    if placed and opts.offload == "none":
        vae.to(device)  # otherwise the offload hooks bring it in for decoding
    video_out = held.family.decode_latents(vae, res.latents)
    if video_out.shape[0] != cfg.frames:  # geometry() admits only counts the VAE gives exactly
        raise RuntimeError(f"the VAE decoded {video_out.shape[0]} frames, not the {cfg.frames} asked for")
    fields = _amf_fields(guide, res.latents, opts.offload)
    record = {"family": held.family.name, "config": cfg.to_dict(), "video": str(video) if isinstance(
                  video, (str, os.PathLike)) else "<frames in memory>", "prompt": prompt,
              "prompt_embeds": None if embeds_file is None else str(embeds_file), "negative_prompt": negative,
              "image": _conditioning(conds.get("image")),
              "run_key": key, "run_key_parts": parts, "torch": torch.__version__,
              "resumed_from_step": res.resumed_from, "guided_passes": res.passes,
              "losses": {str(k): v for k, v in res.losses.items()},
              "embeddings": str(embeds_dir) if embeds_dir is not None else None,
              "ref_cache": cache.summary() if cache is not None else None}
    result = TransferResult(frames=video_out, fps=opts.fps, losses=dict(res.losses), passes=res.passes,
                            amf_reference=None if fields is None else fields[0],
                            amf_result=None if fields is None else fields[1], out=out, record=record)
    if out is not None:
        _write_folder(out, result, opts, guide, fields, frames, held.name, video, t0)
    else:
        record["seconds"] = round(time.time() - t0, 2)
    return result


def _texts(held, prompt, negative, embeds_file, device, dtype) -> dict:
    """``{"prompt", "negative", "empty"}``: a file, the pipeline's own ``encode_prompt``, or the family's encoder."""
    from ..families.prompts import check_embeddings, prompt_embeddings

    pipe = held.pipeline
    if embeds_file is None and pipe is not None and getattr(pipe, "text_encoder", None) is not None:
        got, tr = {}, held.components["transformer"]
        import torch

        with torch.no_grad():
            for name, text in (("prompt", prompt), ("negative", negative), ("empty", "")):
                got[name] = held.family.pipeline_prompt(pipe, text, tr, device, dtype)
        return check_embeddings(got, tr, held.family, "")
    return prompt_embeddings(held.ref, prompt, negative, embeds_file, held.components["transformer"], device=device,
                             dtype=dtype, family=held.family)


def _amf_fields(guide, latents, offload):
    """The reference's and the result's AMF, or None (the AMF is a by-product: never lose a run to it)."""
    from ..viewer.transfer import transfer_fields

    try:
        return transfer_fields(guide, latents, offload=offload)
    except Exception as exc:  # noqa: BLE001
        print(f"ditflow-fast transfer: the AMF of the result was not measured ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return None


def _write_folder(out, result, opts, guide, fields, frames, model_name, video, t0) -> None:
    from ..atomic import write_json
    from ..video_io import write_video
    from ..viewer.transfer import write_transfer_viewer

    path = write_video(result.frames, out / RESULT_NAMES[opts.format], fmt=opts.format, fps=opts.fps)
    if fields is not None:
        write_transfer_viewer(out, guide, None, frames, result.frames, model=model_name,
                              video=result.record["video"], offload=opts.offload, fields=fields)
    result.record.update(result=str(path), seconds=round(time.time() - t0, 2))
    write_json(out / "config.json", result.record)


def _place(offload: str, comps: dict, device, checkpointing: bool) -> None:
    """Components where ``offload`` wants them, through diffusers'/accelerate's own hooks
    (``families/offload.py``); with two experts only the first is on the device, the loop swaps them."""
    from ..families.offload import apply_offload

    if offload == "none":
        for name in ("transformer", "transformer_2"):
            if comps[name] is not None:
                comps[name].to(device if name == "transformer" else "cpu")
        return
    apply_offload({k: comps[k] for k in ("transformer", "transformer_2", "vae")}, offload, device,
                  checkpointing=checkpointing)
