"""Real-size guided steps of every model family, with random weights: time and peak memory of each.

    python scripts/gpu_check/family_steps.py --out OUT.json [--time-limit S]   # on a CUDA device
    python scripts/gpu_check/family_steps.py --out OUT.json --rehearsal        # tiny configs on the CPU

For each model of :data:`RUNS` (a preset of ``ditflow_fast.families``: the public config, no download), at a
modest frame count: the transformer is built from the preset's config with its parameters on the meta
device and its buffers real (the RoPE tables some models compute when built), given storage on the GPU in
the run's dtype (``_keep_in_fp32_modules`` in float32, as diffusers loads them) and random values there
(each module's ``reset_parameters``, norms at one, the rest N(0, 0.02): the cost does not depend on the
values). Then, through the guidance loop itself (:class:`ditflow_fast.guidance.loop.Guide` with random
prompt embeddings and a random reference latent):

- ``reference_s``: the reference capture and its AMF (no grad);
- ``guided_step_s``: one whole guided denoising step of the loop, one Adam iteration: the reference's K/V
  copy, the truncated forward + backward with gradient checkpointing, the denoising forward(s)
  (two with classifier-free guidance, one for a guidance-distilled model);
- ``denoise_forward_s``: one more full denoising forward alone (no grad);
- ``peak_bytes``: the allocator's peak during the guided step (weights included), beside the
  ``--dry-run`` model's prediction without the VAE (not loaded here).

Guards, so the device check stays in its budget: before each model the step's seconds and peak memory are
predicted (the time from the model's FLOPs at the bf16 GEMM rate measured at the start times an efficiency,
re-fitted after each model that ran; the memory from the family's ``--dry-run`` model); a model predicted
past the time left (``--time-limit``, default the device check's ``GPU_CHECK_STEP_TIMEOUT_S``) or past the
GPU's free memory is skipped with the prediction as its reason. The JSON is rewritten after every model.

The image-to-video runs take random image inputs of the shapes their family's ``image_condition`` gives, for the
generation and for the reference's passes alike. CogVideoX-5B (text-to-video) is not here: ``guided_step.py``
measures its step in detail. None of this has run on a GPU yet
(no machine of this project has one); the rehearsal runs the same code on tiny configs on the CPU, and
prints the real-size predictions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

GIB = 2**30
EFFICIENCY0 = 0.3  # the first model's guess of its share of the bf16 GEMM rate (refitted after each model)
BUILD_BYTES_S0 = 20e9  # weight bytes given storage and random values per second, first guess (refitted)
FIRST_CALL_S = 15.0  # kernel compiles and autotuning of the first model (Triton AMF kernels, cuBLAS)
MEMORY_MARGIN = 1.15  # the --dry-run model's prediction, plus this share, must fit the free GPU memory
RESERVE_S = 5.0  # kept back for writing the result


@dataclasses.dataclass(frozen=True)
class Run:
    model: str  # a preset of ditflow_fast.families
    frames: int
    height: int
    width: int
    image: bool = False  # image-to-video: random image inputs as the family takes them (TI2V: a clean first frame)
    note: str = ""


# Cheapest first, so that a short budget still measures something. About 5,000-12,000 video tokens each.
RUNS = (
    Run("Lightricks/LTX-Video", 121, 512, 768, note="LTX-Video 2B at its own size: 16 latent frames of 16x24"),
    Run("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 21, 704, 1280, image=True,
        note="Wan2.2-TI2V-5B (text-image-to-video): per-token timesteps, first latent frame held clean as the image"),
    Run("THUDM/CogVideoX1.5-5B", 17, 768, 1360,
        note="CogVideoX 1.5 at its own size, 17 frames (temporal patches of 2)"),
    Run("Wan-AI/Wan2.1-T2V-14B-Diffusers", 21, 480, 832, note="Wan2.1-14B at 480p, 21 frames"),
    Run("hunyuanvideo-community/HunyuanVideo", 17, 544, 960, note="HunyuanVideo 13B at 544x960, 17 frames"),
    Run("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 21, 480, 832, image=True,
        note="Wan2.1-I2V-14B at 480p, 21 frames: mask and image latents in channels, CLIP tokens in cross-attention"),
    Run("THUDM/CogVideoX-5b-I2V", 49, 480, 720, image=True,
        note="CogVideoX-5B-I2V at its own size (its learned position table's): the image latents in channels"),
)


def _family_of_preset(model: str):
    from ditflow_fast.families import preset_family

    fam = preset_family(model)
    if fam is None:
        raise ValueError(f"{model}: not a preset of any family")
    return fam


class _Cfg(dict):
    """A config dict read as attributes too (what the families' geometry reads from ``vae.config``)."""

    __getattr__ = dict.get


# The VAE entries the families' geometry reads, for the presets without a VAE config (CogVideoX's
# memory presets hold the transformer only): AutoencoderKLCogVideoX's public config, 8x spatial, 4x temporal.
COGVIDEOX_VAE = {"block_out_channels": [128, 256, 256, 512], "temporal_compression_ratio": 4}


def transformer_config(model: str) -> dict:
    preset = _family_of_preset(model).PRESETS[model]
    return dict(preset.get("transformer", preset))


def vae_stand_in(model: str):
    preset = _family_of_preset(model).PRESETS[model]
    return SimpleNamespace(config=_Cfg(preset.get("vae") or COGVIDEOX_VAE))


# -- building a random transformer --------------------------------------------------------------
@contextlib.contextmanager
def params_on_meta():
    """Parameters made while inside go to the meta device (no memory, no init cost); buffers stay where
    they are made, with their values (what accelerate's ``init_empty_weights(include_buffers=False)`` does)."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def transformer_class(fam):
    import diffusers

    return getattr(diffusers, fam.transformer_class)


def build_meta(fam, config: dict):
    """The transformer of ``config`` with its parameters on the meta device (buffers real, on the CPU)."""
    with params_on_meta():
        return transformer_class(fam).from_config(config)


def materialise(tr, device, dtype: torch.dtype, seed: int = 0):
    """Give every meta parameter storage on ``device`` in ``dtype`` (float32 for the class's
    ``_keep_in_fp32_modules``, as diffusers loads them) and random values; buffers move to ``device``."""
    keep = set(getattr(type(tr), "_keep_in_fp32_modules", None) or ())
    for mname, module in tr.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None:
                continue
            dt = torch.float32 if keep & set(f"{mname}.{pname}".split(".")) else dtype
            module._parameters[pname] = torch.nn.Parameter(torch.empty(p.shape, device=device, dtype=dt),
                                                           requires_grad=False)
    tr.to(device)
    torch.manual_seed(seed)
    with torch.no_grad():
        done = set()
        for module in tr.modules():
            own = [p for p in module._parameters.values() if p is not None]
            if not own:
                continue
            if "Norm" in type(module).__name__:  # a norm's scale at one, shift at zero
                for name, p in module._parameters.items():
                    if p is not None:
                        p.fill_(1.0 if name == "weight" else 0.0)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                continue
            done.update(id(p) for p in own)
        for p in tr.parameters():
            if id(p) not in done:
                p.normal_(0.0, 0.02)
    return tr.eval()


# -- predictions --------------------------------------------------------------------------------
def forward_flops(fam, config: dict, params: int, video_tokens: int, text_tokens: int) -> float:
    """Nominal FLOPs of one full forward: ``2 * params * tokens`` plus self-attention's
    ``4 * tokens^2 * H * d`` per block (text tokens join the attention where the family puts them in it)."""
    joint = fam.text_position != "none"
    t = video_tokens + (text_tokens if joint else 0)
    heads, dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    return 2.0 * params * t + 4.0 * fam.block_count(config) * t * t * heads * dim


def step_forwards(fam, config: dict, block: int, cfg_forwards: int) -> float:
    """Full-forward equivalents of what is timed: the reference capture (to the guidance block), the K/V copy
    (block 0), one Adam iteration (forward to the block, recomputed, backward: about 4x), the step's
    denoising forward(s), and the extra denoising forward."""
    frac = (block + 1) / fam.block_count(config)
    return frac + 1 / fam.block_count(config) + 4 * frac + cfg_forwards + 1


@dataclasses.dataclass
class Plan:
    run: Run
    fam: object
    config: dict
    latent_shape: tuple
    grid: tuple
    block: int
    params: int
    flops: float
    predicted_bytes: int | None
    text: tuple  # (length, width) of the prompt embeddings


def plan(run: Run, config: dict | None = None, vae=None, bytes_per_elem: int = 2) -> Plan:
    """Sizes, parameter count (meta device), FLOPs and the ``--dry-run`` peak of ``run`` (real size unless a
    tiny ``config`` and ``vae`` are given)."""
    from ditflow_fast.guidance.config import GuidanceConfig

    fam = _family_of_preset(run.model)
    real = config is None
    config = transformer_config(run.model) if real else config
    vae = vae_stand_in(run.model) if real else vae
    meta = build_meta(fam, config)
    params = sum(p.numel() for p in meta.parameters())
    cfg = GuidanceConfig(model=run.model, frames=run.frames, height=run.height, width=run.width).resolve(
        meta, device="cpu", family=fam)
    shape = tuple(fam.geometry(meta, vae, run.frames, run.height, run.width))
    grid = tuple(fam.token_grid(meta, torch.empty(shape, device="meta")))
    length, width = fam.text_spec(meta)
    length = length or fam.prompt_length(meta) or 16
    video = grid[0] * grid[1] * grid[2]
    cfg_forwards = 2 if fam.needs_uncond(cfg) else 1
    block = cfg.guidance_blocks[0]
    flops = forward_flops(fam, config, params, video, length) * step_forwards(fam, config, block, cfg_forwards)
    predicted = None
    if real:
        est = fam.estimate(fam.memory_config(run.model), frames=run.frames, height=run.height, width=run.width,
                           guidance_block=block, bytes_per_elem=bytes_per_elem, opt_mode="latent",
                           checkpointing=True)
        predicted = int(est.total - est.components.get("VAE weights", 0))
    del meta
    return Plan(run, fam, config, shape, grid, block, params, flops, predicted, (length, width))


def predict_seconds(p: Plan, gemm_flops_s: float, efficiency: float, build_bytes_s: float, first: bool) -> dict:
    build = p.params * 2 / build_bytes_s
    compute = p.flops / (gemm_flops_s * efficiency)
    return {"build_s": round(build, 1), "compute_s": round(compute, 1),
            "total_s": round(build + compute + (FIRST_CALL_S if first else 2.0), 1)}


def guard(guess: dict, efficiency: float, predicted_bytes: int, left_s: float, limit_s: float,
          free_bytes: int) -> str | None:
    """Why a model must not be started (its predicted peak memory or time does not fit), or None."""
    if predicted_bytes * MEMORY_MARGIN > free_bytes:
        return (f"predicted peak {predicted_bytes / GIB:.1f} GiB (+{MEMORY_MARGIN - 1:.0%}, the --dry-run model) > "
                f"{free_bytes / GIB:.1f} GiB free on the GPU")
    if guess["total_s"] > left_s:
        return (f"predicted {guess['total_s']} s (build {guess['build_s']} s, compute {guess['compute_s']} s at "
                f"{efficiency:.2f} of the GEMM rate) > {max(left_s, 0):.0f} s left of this step's {limit_s:.0f} s")
    return None


# -- one model ----------------------------------------------------------------------------------
def prompt(fam, tr, length: int, width: int, generator, device, dtype):
    """Random prompt embeddings ``[1, length, width]`` (HunyuanVideo's packed layout: every token real)."""
    if fam.name == "hunyuanvideo":
        from ditflow_fast.families.hunyuan import text

        c = tr.config
        emb = torch.randn(1, length, int(c.text_embed_dim), generator=generator)
        pooled = torch.randn(1, int(c.pooled_projection_dim), generator=generator)
        return text.pack(emb, pooled, torch.ones(1, length, dtype=torch.long)).to(device, dtype)
    return torch.randn(1, length, width, generator=generator).to(device, dtype)


def scheduler_for(run: Run, fam):
    """The scheduler class the family samples with, in its folder's configuration."""
    if fam.name == "cogvideox":
        from ditflow_fast.families.cogvideox import tiny

        return dict(tiny.tiny_scheduler(True, folder=True).config)
    if fam.name == "wan":
        from ditflow_fast.families.wan import tiny

        return tiny.tiny_scheduler(fam.defaults(fam.PRESETS[run.model])["flow_shift"])
    if fam.name == "ltx":
        from ditflow_fast.families.ltx import tiny

        return tiny.tiny_scheduler()
    from ditflow_fast.families.hunyuan import tiny

    return tiny.tiny_scheduler()


def measure(p: Plan, tr, device, sync) -> dict:
    """The timed part, on a built transformer: reference, one guided step, one denoising forward."""
    from ditflow_fast.guidance.config import GuidanceConfig
    from ditflow_fast.guidance.loop import Guide

    run, fam = p.run, p.fam
    cuda = device.type == "cuda"
    cfg = GuidanceConfig(model=run.model, frames=run.frames, height=run.height, width=run.width, guided_steps=1,
                         opt_iters=1, device=str(device)).resolve(tr, device=device, family=fam)
    dtype = cfg.torch_dtype
    if run.image and fam.name == "wan" and not fam.image_model(dict(tr.config)):
        tr._ditflow_expand_timesteps = True  # TI2V-5B: timesteps per token (WanFamily.load sets it from the folder)
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(p.latent_shape, generator=g)
    text = {k: prompt(fam, tr, *p.text, g, device, dtype) for k in ("prompt", "negative")}
    image = None
    if run.image:
        image = random_image_inputs(fam, tr, p.latent_shape, g)
    guide = Guide(tr, scheduler_for(run, fam), ref_latent=ref, prompt_embeds=text["prompt"],
                  negative_embeds=text["negative"], config=cfg, model_id=run.model, family=fam, image=image,
                  ref_image=image)
    out = {"dtype": cfg.dtype, "guidance_block": p.block, "amf_backend": cfg.backend}
    sync()
    t0 = time.perf_counter()
    guide.reference_targets()
    sync()
    out["reference_s"] = round(time.perf_counter() - t0, 4)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = guide.run(max_steps=1, progress=False)
    sync()
    out["guided_step_s"] = round(time.perf_counter() - t0, 4)
    if cuda:
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    losses = [v for h in res.losses.values() for v in h]
    out["loss"] = losses[-1] if losses else None
    x = guide.noise.to(dtype)
    t = guide.timesteps[1]
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        fam.forward(tr, x, guide.cond, t, None, **guide.gen_kw)
        sync()
    out["denoise_forward_s"] = round(time.perf_counter() - t0, 4)
    return out


def random_image_inputs(fam, tr, latent_shape: tuple, g):
    """Random image inputs of the shapes ``fam.image_condition`` gives (the cost does not depend on the values):
    CogVideoX-I2V's ``image_latents``; Wan I2V's ``condition`` (mask and image latents) and, for Wan2.1-I2V, 257
    CLIP tokens; TI2V-5B's clean first latent frame, its tokens at timestep 0."""
    from ditflow_fast.families.base import ImageCondition

    axis = 1 if fam.latent_layout == "BFCHW" else 2
    first = torch.randn(latent_shape, generator=g).narrow(axis, 0, 1)
    if not fam.image_model(dict(tr.config)):
        return ImageCondition(forward_kw={"first_frame": first} if fam.name == "wan" else {}, anchor=first,
                              anchor_noised=False)
    if fam.name == "cogvideox":
        return ImageCondition(forward_kw={"image_latents": first})
    _, z, f, h, w = latent_shape
    kw = {"condition": torch.randn(1, tr.config.in_channels - z, f, h, w, generator=g)}
    if tr.config.image_dim is not None:
        kw["image_embeds"] = torch.randn(1, 257, tr.config.image_dim, generator=g)
    return ImageCondition(forward_kw=kw)


def tiny_kit(run: Run):
    """(transformer config, VAE) of the family's tiny models for the rehearsal's version of ``run``, and its
    tiny sizes (the family conformance tests' awkward ones)."""
    fam = _family_of_preset(run.model).name
    if fam == "cogvideox":
        from ditflow_fast.families.cogvideox import tiny

        if run.image:  # 5B-I2V: its learned position table fixes the tiny size
            return dict(tiny.tiny_transformer(True, 3, 0, i2v=True, learned=True).config), tiny.tiny_vae(), \
                (tiny.FRAMES, tiny.HEIGHT, tiny.WIDTH)
        return dict(tiny.tiny_transformer(True, 3, 0, v15=True).config), tiny.tiny_vae(), (9, 48, 64)
    if fam == "wan":
        from ditflow_fast.families.wan import tiny

        if run.image and "TI2V" in run.model:
            vae = tiny.tiny_vae(wan22=True)
            return dict(tiny.tiny_transformer(3, 0, in_channels=vae.config.z_dim).config), vae, (9, 64, 96)
        if run.image:  # Wan2.1-I2V: latent, mask and image latents in; CLIP tokens in cross-attention
            vae = tiny.tiny_vae()
            z = vae.config.z_dim
            return dict(tiny.tiny_transformer(3, 0, in_channels=2 * z + vae.config.scale_factor_temporal,
                                              out_channels=z, image_dim=tiny.IMAGE_DIM).config), vae, (9, 48, 80)
        return dict(tiny.tiny_transformer().config), tiny.tiny_vae(), (9, 48, 80)
    if fam == "ltx":
        from ditflow_fast.families.ltx import tiny

        return dict(tiny.tiny_transformer().config), tiny.tiny_vae(), (17, 96, 128)
    from ditflow_fast.families.hunyuan import tiny

    return dict(tiny.tiny_transformer().config), tiny.tiny_vae(), (9, 48, 80)


def gemm_rate(device, sync) -> float:
    """bf16 FLOP/s of a square GEMM on ``device`` (the yardstick of the time predictions)."""
    n = 8192 if device.type == "cuda" else 512
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync()
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rehearsal", action="store_true", help="tiny configs on the CPU (exercises the code only)")
    ap.add_argument("--time-limit", type=float,
                    default=float(os.environ.get("GPU_CHECK_STEP_TIMEOUT_S", 300)),
                    help="seconds this script may take (default: the device check's GPU_CHECK_STEP_TIMEOUT_S, or 300)")
    ap.add_argument("--models", help="comma-separated presets to run (default: all of RUNS)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    runs = RUNS if not a.models else tuple(r for r in RUNS if r.model in a.models.split(","))
    if a.models and len(runs) != len(a.models.split(",")):
        print(f"--models: known presets are {', '.join(r.model for r in RUNS)}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and not a.rehearsal
    if not cuda and not a.rehearsal:
        print("no CUDA device: run with --rehearsal for the tiny CPU version", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    from ditflow_fast.atomic import write_text

    doc = {"rehearsal": not cuda, "device": torch.cuda.get_device_name() if cuda else "CPU (rehearsal)",
           "time_limit_s": a.time_limit, "status": "running", "models": [],
           "note": ("never run on a GPU before this run: the figures are the first of their kind" if cuda else
                    "REHEARSAL: tiny configs on the CPU in float32; exercises the code, measures nothing; the "
                    "real-size predictions are listed per model")}

    def save():
        write_text(Path(a.out), json.dumps(doc, indent=1, default=str) + "\n")

    rate = gemm_rate(device, sync)
    doc["gemm_tflop_s"], doc["gemm_dtype"] = round(rate / 1e12, 2), "bf16" if cuda else "float32"
    save()
    efficiency, build_rate, first = EFFICIENCY0, BUILD_BYTES_S0, True
    print(f"family steps on {doc['device']}: {'bf16' if cuda else 'float32'} GEMM {rate / 1e12:.3g} TFLOP/s; "
          f"{a.time_limit:.0f} s for this step", flush=True)
    for run in runs:
        fam = _family_of_preset(run.model)
        entry = {"model": run.model, "family": fam.name, "what": run.note, "frames": run.frames,
                 "height": run.height, "width": run.width, "status": "planned"}
        doc["models"].append(entry)
        try:
            real = plan(run)
        except Exception as exc:  # a preset the family cannot size: a finding, not the end of the check
            missing = isinstance(exc, ModuleNotFoundError) and not cuda  # e.g. transformers (Wan2.1-I2V's CLIP)
            entry.update(status="skipped" if missing else "error",
                         reason=(f"not in the rehearsal's environment (the GPU image has more): {exc}" if missing
                                 else f"planning: {type(exc).__name__}: {exc}"))
            print(f"{run.model}: {entry['reason']}", flush=True)
            save()
            continue
        guess = predict_seconds(real, rate if cuda else 989e12 * 0.8, efficiency, build_rate, first)
        entry.update(latent_shape=list(real.latent_shape), tokens=real.grid[0] * real.grid[1] * real.grid[2],
                     parameters=real.params, guidance_block=real.block, tflop=round(real.flops / 1e12, 1),
                     predicted_peak_bytes=real.predicted_bytes, predicted=guess)
        print(f"{run.model}: {entry['tokens']} video tokens, {real.params / 1e9:.2f} B parameters, "
              f"{entry['tflop']} TFLOP timed, predicted {guess['total_s']} s"
              + ("" if cuda else " (at an H100's bf16 rate x 0.8: real size is not run here)")
              + f", peak {real.predicted_bytes / GIB:.1f} GiB (--dry-run model, no VAE)", flush=True)
        left = a.time_limit - (time.perf_counter() - t_start) - RESERVE_S
        if cuda:
            why = guard(guess, efficiency, real.predicted_bytes, left, a.time_limit, torch.cuda.mem_get_info()[0])
            if why:
                entry.update(status="skipped", reason=why)
                print(f"   skipped: {why}", flush=True)
                save()
                continue
            p = real
        else:
            config, vae, (frames, height, width) = tiny_kit(run)
            p = plan(dataclasses.replace(run, frames=frames, height=height, width=width), config, vae)
            entry["rehearsal_size"] = {"frames": frames, "height": height, "width": width,
                                       "latent_shape": list(p.latent_shape)}
        try:
            t0 = time.perf_counter()
            tr = materialise(build_meta(p.fam, p.config), device, torch.bfloat16 if cuda else torch.float32)
            sync()
            entry["build_s"] = round(time.perf_counter() - t0, 3)
            if cuda:
                entry["weights_bytes"] = torch.cuda.memory_allocated()
            t1 = time.perf_counter()
            entry.update(measure(p, tr, device, sync))
            compute = time.perf_counter() - t1
            entry["status"] = "ok"
            if cuda:  # refit the guesses on what this model took
                efficiency = min(1.0, max(0.02, p.flops / (compute * rate)))
                build_rate = max(1e9, p.params * 2 / max(entry["build_s"], 1e-3))
                first = False
                entry["achieved_share_of_gemm"] = round(p.flops / (compute * rate), 3)
        except ModuleNotFoundError as exc:
            if cuda:
                entry.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            else:  # the rehearsal's environment is the GPU image's less some packages (transformers: LTX's sampler)
                entry.update(status="skipped", reason=f"not in the rehearsal's environment (the GPU image has more): "
                                                      f"{exc}")
        except Exception as exc:  # noqa: BLE001 - one model's failure is recorded; the others still run
            entry.update(status="error", reason=f"{type(exc).__name__}: {str(exc)[:500]}")
        finally:
            tr = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        print("   " + ", ".join(f"{k} {entry[k]}" for k in ("status", "reason", "build_s", "reference_s",
                                                            "guided_step_s", "denoise_forward_s", "peak_bytes",
                                                            "loss") if entry.get(k) is not None), flush=True)
        save()
    doc["status"] = "done"
    doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    save()
    return 1 if any(m["status"] == "error" for m in doc["models"]) else 0


if __name__ == "__main__":
    sys.exit(main())
