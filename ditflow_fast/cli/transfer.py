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
import sys


def add_transfer_parser(sub) -> None:
    from ..transfer_api.options import FORMATS, OFFLOADS
    from ..transfer_api.options import TransferOptions as D  # one set of defaults for the command and the API

    p = sub.add_parser("transfer", help="DiTFlow motion transfer (reference video + prompt -> video)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--video", help="reference: a video file (mp4, ...) or a folder of frames")
    p.add_argument("--prompt", help="text of the video to generate")
    p.add_argument("--image", metavar="PATH", help="image-to-video: the generated video starts from this image "
                   "(required by an I2V model; a text-to-video model holds its first latent frame to it, weaker: "
                   "docs/i2v.md)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--prompt-embeds", metavar="FILE",
                   help="safetensors with 'prompt' [1, L, D] (and optional 'negative', 'empty') instead of T5")
    p.add_argument("--model", default="THUDM/CogVideoX-5b", help="hub id or local diffusers folder")
    p.add_argument("--frames", type=int, help="video frames taken from the reference and generated (default: the "
                   "model's, e.g. 24 for CogVideoX-5B, 81 for Wan2.1; every family's is in the README's table; "
                   "CogVideoX takes 8k or 8k+1, LTX-Video 8k+1, Wan and HunyuanVideo 4k+1)")
    p.add_argument("--height", type=int, help="default: the model's (e.g. 480 for CogVideoX-5B and Wan2.1; the "
                   "README's family table)")
    p.add_argument("--width", type=int, help="default: the model's (e.g. 720 CogVideoX-5B, 832 Wan2.1; the README's "
                   "family table)")
    p.add_argument("--opt-mode", choices=("latent", "emb"), default=D.opt_mode)
    p.add_argument("--loss", choices=("flow", "flow_window", "moft", "smm"), default=D.loss,
                   help="flow: DiTFlow's AMF loss; flow_window: FastVMT-style, the AMF within a window "
                        "(docs/guidance.md); moft, smm: the baselines")
    p.add_argument("--no-guidance", action="store_true", help="no optimisation (injection still applies)")
    p.add_argument("--no-injection", action="store_true", help="no K/V injection at block 0")
    p.add_argument("--amf-no-rope", action="store_true",
                   help="the AMF from q and k before the rotary position embedding, their content alone (attention "
                        "itself keeps it); on the toy Wan model RoPE pins the reference AMF to standing still "
                        "(docs/guidance.md)")
    p.add_argument("--inject-embeds", metavar="DIR", help="zero-shot: reuse embeddings saved by an emb run")
    p.add_argument("--guidance-block", type=int, action="append",
                   help="default: the model's (CogVideoX 20 (5B) / 15 (2B), Wan 14 (1.3B) / 19 (14B); by depth, "
                        "unverified on real weights: CogVideoX 1.5 20 of 42, LTX-Video 13 of 28, HunyuanVideo 28 of 60 "
                        "(dual-stream 0-19, then single-stream)); repeatable")
    p.add_argument("--cfg", type=float,
                   help="classifier-free guidance scale (default: the model's: CogVideoX 7, Wan 5, Wan2.2 A14B 4 "
                        "then 3 for the low-noise expert (I2V 3.5 both), LTX-Video 3; given, it sets both experts); "
                        "HunyuanVideo: its embedded guidance scale (default 6; one forward per step, no "
                        "unconditional pass)")
    p.add_argument("--flow-shift", type=float, help="Wan, HunyuanVideo: the sampler's flow shift (default: the model "
                   "folder's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's, 50; Wan2.2 A14B 40)")
    p.add_argument("--guided-steps", type=int, default=D.guided_steps)
    p.add_argument("--opt-iters", type=int, default=D.opt_iters, help="Adam iterations per guided step")
    p.add_argument("--grad-reuse", type=int, default=D.grad_reuse, metavar="K",
                   help="speed lever: one real forward+backward every K-th Adam iteration, its gradient reused "
                        "in between (1: every iteration, the paper's; FastVMT uses 3). See docs/guidance.md")
    p.add_argument("--early-stop", type=float, default=D.early_stop, metavar="TOL",
                   help="speed lever: end a guided step's iterations once its AMF loss falls by less than TOL "
                        "(relative) from one pass to the next (0: off, the paper's)")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--lr", type=float, nargs=2, default=D.lr, metavar=("FIRST", "LAST"),
                   help="Adam learning rate at the first and the last guided step, linear in between "
                        f"(default {D.lr[0]:g} {D.lr[1]:g}, DiTFlow's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device")
    p.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing")
    p.add_argument("--cpu-offload", action="store_true", help="keep the VAE on the CPU except when it runs")
    p.add_argument("--offload", choices=OFFLOADS, default=D.offload,
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
    p.add_argument("--format", choices=FORMATS, default=D.format)
    p.add_argument("--fps", type=int, default=D.fps, help="frames per second of the mp4/gif (> 0)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved state in --out and start over")
    p.add_argument("--dry-run", action="store_true", help="print the predicted peak GPU memory and exit")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest for tiny models on busy CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ref-cache", metavar="DIR", help="cache the reference latent and its guidance targets in DIR "
                   "(safetensors keyed by a hash of their inputs), shared by every run on the same reference")
    p.set_defaults(func=run_transfer)


def run_transfer(a, held=None) -> int:
    """One transfer from parsed arguments ``a`` through :func:`ditflow_fast.transfer_api.run`; ``held``: a
    :class:`~ditflow_fast.transfer_api.HeldModel` to use instead of loading ``--model``."""
    from ..transfer_api import TransferOptions
    from ..transfer_api import run as run_api

    opts = TransferOptions.from_namespace(a)  # every option's rule, before anything is loaded
    if a.dry_run:
        from .dry_run import dry_run

        cfg = opts.guidance_config(a.model)
        if opts.grad_reuse > 1 and cfg.opt_mode == "emb" and cfg.guidance and not cfg.inject_embeds:
            from ..transfer_api.run import EMB_REUSE_WARNING

            print(EMB_REUSE_WARNING, file=sys.stderr)
        return dry_run(a.model, cfg, a.offload)
    res = run_api(held if held is not None else a.model, a.video, opts, prompt=a.prompt, image=a.image,
                  negative_prompt=a.negative_prompt, prompt_embeds=a.prompt_embeds, out=a.out, bar=not a.quiet)
    f, h, w = res.frames.shape[:3]
    print(f"wrote {res.record['result']} ({f} frames {w}x{h}) in {res.record['seconds']} s")
    return 0
