"""One real-size DiTFlow optimisation step with CogVideoX-5B's architecture: time split and peak memory.

    python scripts/gpu_check/guided_step.py --out OUT.json            # on a CUDA device (bf16)
    python scripts/gpu_check/guided_step.py --out OUT.json --rehearsal  # toy config on the CPU

The transformer is built from the public config (``ditflow_fast.families.cogvideox.memory.PRESETS``: no
download) on the meta device, materialised on the GPU in bf16 and initialised there with each
module's own ``reset_parameters`` (random weights: the cost does not depend on the values). The
step is what the guidance loop does in one Adam iteration of ``opt_mode=latent``: the optimised
latent (fp32) goes through the transformer in bf16 with gradient checkpointing, truncated after the
guidance block (20 for CogVideoX-5B) where q and k are captured; the soft AMF against a reference
argmax AMF (captured once from another latent, no grad) gives DiTFlow's thresholded loss; backward;
Adam step. Timed parts, each between device synchronisations:

- forward: the truncated transformer forward up to and including the guidance block's q/k;
- amf: the soft AMF forward, the loss, and their backward to q and k (``torch.autograd.grad``);
- backward: the rest of the backward, from q and k through the checkpointed blocks (recomputed);
- optimizer: the Adam step.

The peak GPU memory of a measured iteration (allocator peak of the whole process: weights
included) is reported beside ``ditflow-fast transfer --dry-run``'s prediction
(:func:`ditflow_fast.families.cogvideox.memory.estimate` with the CLI's arguments), with and without the
VAE weights that the dry run counts and this step does not load. The JSON is rewritten after each
phase, so a killed run still leaves what it had measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

MODEL = "THUDM/CogVideoX-5b"
# Rehearsal: the same code at toy size on the CPU (not a measurement of anything).
TINY = dict(num_attention_heads=2, attention_head_dim=16, num_layers=3, in_channels=4, out_channels=4,
            text_embed_dim=32, time_embed_dim=16, max_text_seq_length=8, use_rotary_positional_embeddings=True,
            sample_height=8, sample_width=12, patch_size=2)


def materialise(config: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """The CogVideoX transformer of ``config`` built on the meta device, then given storage on
    ``device`` in ``dtype`` and initialised there (every module's ``reset_parameters``; a parameter
    of a module without one is drawn from N(0, 0.02))."""
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        tr = CogVideoXTransformer3DModel.from_config(config)
    torch.nn.Module.to(tr, dtype=dtype)
    tr.to_empty(device=device)
    torch.manual_seed(seed)
    done = set()
    with torch.no_grad():
        for m in tr.modules():
            own = list(m.parameters(recurse=False))
            if own and hasattr(m, "reset_parameters"):
                m.reset_parameters()
                done.update(id(p) for p in own)
        for p in tr.parameters():
            if id(p) not in done:
                p.normal_(0.0, 0.02)
    buffers = [name for name, _ in tr.named_buffers()]
    if buffers:  # to_empty leaves them uninitialised; CogVideoX's RoPE models register none
        raise RuntimeError(f"buffers {buffers} would hold uninitialised memory after to_empty")
    return tr.requires_grad_(False).eval()


class Result:
    """The JSON document, rewritten on every update."""

    def __init__(self, path: Path, **fields):
        self.path, self.data = path, dict(fields)
        self.save()

    def update(self, **fields):
        self.data.update(fields)
        self.save()

    def note(self, text: str):
        self.data.setdefault("notes", []).append(text)
        print(text, flush=True)
        self.save()

    def save(self):
        from ditflow_fast.atomic import write_text

        write_text(self.path, json.dumps(self.data, indent=1, default=str) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rehearsal", action="store_true", help="toy config on the CPU (exercises the code only)")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--block", type=int, default=20, help="guidance block (the truncation point)")
    ap.add_argument("--iters", type=int, default=3, help="measured iterations after the first")
    ap.add_argument("--backends", default="triton,torch", help="AMF backends timed alone on the captured q, k")
    a = ap.parse_args(argv)

    from ditflow_fast.api import choose_backend
    from ditflow_fast.bench.timing import time_callable
    from ditflow_fast.families.cogvideox.attention import install
    from ditflow_fast.families.cogvideox.memory import PRESETS, estimate
    from ditflow_fast.families.cogvideox.positions import rotary_embedding
    from ditflow_fast.guidance import losses, run_until

    cuda = torch.cuda.is_available() and not a.rehearsal
    if not cuda and not a.rehearsal:
        print("no CUDA device: run with --rehearsal for the toy CPU version", file=sys.stderr)
        return 2
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    config = dict(PRESETS[MODEL]) if cuda else dict(TINY)
    frames, height, width = (a.frames, 480, 720) if cuda else (9, 64, 96)
    block = a.block if cuda else 1
    p = config["patch_size"]
    lat_f, lh, lw = (frames - 1) // 4 + 1, height // 8, width // 8
    hh, ww = lh // p, lw // p
    res = Result(Path(a.out), rehearsal=not cuda, model=MODEL if cuda else "toy CogVideoX config",
                 what=(f"{MODEL} architecture, random bf16 weights, {frames} frames at {height}x{width} "
                       f"({lat_f} latent frames of {hh}x{ww} patches), gradient checkpointing, truncated after "
                       f"block {block}, opt-mode latent, Adam" if cuda else
                       "REHEARSAL: toy CogVideoX config on the CPU in float32; exercises the code, measures nothing"),
                 frames=frames, height=height, width=width, block=block, status="running")
    # The dry run's prediction, with the arguments `ditflow-fast transfer --dry-run` passes by default.
    est = estimate(config, frames=frames, height=height, width=width, guidance_block=block,
                   bytes_per_elem=2 if cuda else 4, opt_mode="latent", checkpointing=True, vae_offload=False)
    vae = est.components["VAE weights"]
    res.update(prediction={k: v for k, v in est.components.items()},
               memory={"predicted_total_bytes": est.total, "predicted_without_vae_bytes": est.total - vae})

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    tr = materialise(config, device, dtype)
    tr.enable_gradient_checkpointing()
    install(tr)
    sync()
    weights = torch.cuda.memory_allocated() if cuda else None
    res.update(build_s=round(time.perf_counter() - t0, 3),
               parameters=sum(x.numel() for x in tr.parameters()),
               memory={**res.data["memory"], "measured_weights_bytes": weights})

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, lat_f, config["in_channels"], lh, lw, generator=gen, device=device, requires_grad=True)
    ref_latent = torch.randn(1, lat_f, config["in_channels"], lh, lw, generator=gen, device=device)
    embeds = torch.randn(1, config["max_text_seq_length"], config["text_embed_dim"], generator=gen, device=device,
                         dtype=dtype)
    t = torch.tensor([500], device=device)
    cos, sin = rotary_embedding(tr, lat_f, lh, lw, device=device)
    rope = (cos.to(dtype), sin.to(dtype))
    opt = torch.optim.Adam([x], lr=2e-3)
    kw = dict(frames=lat_f, h=hh, w=ww)

    def capture(latent):
        ctrl = run_until(tr, hidden_states=latent.to(dtype), encoder_hidden_states=embeds, timestep=t,
                         image_rotary_emb=rope, stop_after=block, qk_blocks=[block])
        qk = ctrl.qk.pop(block)
        ctrl.clear_captures()
        return qk

    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        target = losses.reference("flow", capture(ref_latent), **kw)
    sync()
    res.update(timing={"reference_s": round(time.perf_counter() - t0, 4)})

    def iteration() -> dict:
        sync()
        s0 = time.perf_counter()
        q, k = capture(x)
        sync()
        s1 = time.perf_counter()
        loss = losses.loss("flow", (q, k), target, temperature=2.0, threshold=True, **kw)
        gq, gk = torch.autograd.grad(loss, [q, k])
        sync()
        s2 = time.perf_counter()
        torch.autograd.backward([q, k], [gq, gk])
        sync()
        s3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        s4 = time.perf_counter()
        return {"forward_s": s1 - s0, "amf_s": s2 - s1, "backward_s": s3 - s2, "optimizer_s": s4 - s3,
                "iteration_s": s4 - s0, "loss": float(loss)}

    # The backend the loss's compute_amf takes (soft mode, with a gradient), and why others were not.
    q0, k0 = (z.detach().requires_grad_() for z in capture(x.detach()))
    choice = choose_backend(q0, k0, frames=lat_f, height=hh, width=ww)
    res.update(amf_backend=choice.name, amf_backend_skipped=choice.skipped, q_shape=list(q0.shape),
               q_dtype=str(q0.dtype))
    del q0, k0

    first = iteration()
    timing = {**res.data["timing"], "first_iteration_s": round(first["iteration_s"], 4)}
    res.update(timing=timing, status="first iteration done")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    its = [iteration() for _ in range(max(1, a.iters))]
    sync()
    med = {k: statistics.median(it[k] for it in its) for k in its[0] if k != "loss"}
    timing.update({k: round(v, 5) for k, v in med.items()})
    timing["amf_share"] = round(med["amf_s"] / med["iteration_s"], 4)
    timing["iterations"] = [{k: round(v, 5) for k, v in it.items()} for it in its]
    mem = dict(res.data["memory"])
    if cuda:
        mem["measured_peak_bytes"] = torch.cuda.max_memory_allocated()
        mem["measured_reserved_bytes"] = torch.cuda.max_memory_reserved()
        mem["measured_over_predicted"] = round(mem["measured_peak_bytes"] / mem["predicted_without_vae_bytes"], 4)
    else:
        res.note("CPU: no allocator peak to measure (memory figures are predictions only)")
    res.update(timing=timing, memory=mem, status="step measured")

    # The AMF alone (soft forward + backward to q and k) with each backend, on one captured q, k.
    q0, k0 = (z.detach() for z in capture(x.detach()))
    by = {}
    for name in [s for s in a.backends.split(",") if s]:
        qq, kk = q0.clone().requires_grad_(), k0.clone().requires_grad_()

        def amf_step(name=name, qq=qq, kk=kk):
            qq.grad = kk.grad = None
            losses.loss("flow", (qq, kk), target, temperature=2.0, threshold=True, backend=name, **kw).backward()

        try:
            times = time_callable(amf_step, warmup=1, repeats=3, device=device)
            by[name] = {"median_s": statistics.median(times), "times_s": times}
        except Exception as exc:  # a backend that refuses this device or shape
            by[name] = {"median_s": None, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        res.update(amf_by_backend=by)
    res.update(status="done")
    print(json.dumps({k: res.data[k] for k in ("amf_backend", "timing", "memory")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
