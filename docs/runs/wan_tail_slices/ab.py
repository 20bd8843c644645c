"""Seconds of one guided Wan iteration (checkpointed forward to the guidance block, backward), with the recomputed
block's tail in 8 token slices (the default since session 9), its FFN alone in 8 slices (before), and unsliced.

``OMP_NUM_THREADS=1 PYTHONPATH=. python docs/runs/wan_tail_slices/ab.py`` (one thread, CPU, float32); the three
variants run in turns on one model, 9 rounds after one warm-up each; medians and ratios to the FFN-only run.
"""

import json
import platform
import time

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from ditflow_fast.families.wan import chunking
from ditflow_fast.families.wan.family import WanFamily

torch.set_num_threads(1)
HEADS, HD, FRAMES, HH, WW, TEXT, Z = 8, 32, 3, 16, 24, 24, 4
torch.manual_seed(0)
tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HD, in_channels=Z,
                           out_channels=Z, text_dim=32, freq_dim=32, ffn_dim=4 * HEADS * HD, num_layers=4,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                           rope_max_seq_len=64).eval().requires_grad_(False)
tr.enable_gradient_checkpointing()
WanFamily.install(tr)
x = torch.randn(1, Z, FRAMES, HH * 2, WW * 2, requires_grad=True)
e = torch.randn(1, TEXT, 32)
n = FRAMES * HH * WW
wq, wk = torch.randn(2, 1, HEADS, n, HD)


def iteration():
    ctrl = WanFamily.run_until(tr, x, e, 500, stop_after=3, qk_blocks=[3])
    q, k = ctrl.qk.pop(3)
    ((q * wq).sum() + (k * wk).sum()).backward()
    x.grad = None


VARIANTS = {"tail in 8 slices": (8, "tail"), "FFN in 8 slices": (8, "ffn"), "unsliced": (1, "tail")}
times = {k: [] for k in VARIANTS}
for rnd in range(10):
    for name, (chunks, scope) in VARIANTS.items():
        chunking.uninstall(tr)
        chunking.install(tr, chunks, scope=scope)
        t0 = time.perf_counter()
        iteration()
        if rnd:  # round 0 is the warm-up
            times[name].append(time.perf_counter() - t0)
med = {k: float(np.median(v)) for k, v in times.items()}
base = med["FFN in 8 slices"]
out = {"machine": platform.processor() or platform.machine(), "tokens": n, "torch": torch.__version__,
       "median_s": med, "ratio_to_ffn_slices": {k: v / base for k, v in med.items()}, "runs": times}
print(json.dumps({k: out[k] for k in ("tokens", "median_s", "ratio_to_ffn_slices")}, indent=1))
with open(__file__.replace("ab.py", "ab.json"), "w") as fh:
    json.dump(out, fh, indent=1)
