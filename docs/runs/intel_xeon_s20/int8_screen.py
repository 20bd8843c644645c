"""Would an int8 screen (AVX512-VNNI, this Xeon's only multiply cheaper than float32) make the exact argmax
cheaper? At cpu-5b's inputs, count the keys an exact screen would have to rescore: q and k rounded per row to int8
(scale max|row| / 127) or to bf16, the score error bounded by Cauchy-Schwarz, |s - s~| <= |q| |k - k~| +
|q - q~| |k~| (the input-rounding part of the bf16 screen's bound in csrc/amf_cpu_screen.cpp, without its
accumulation terms and its two stages), and a key kept when s~ + E can reach the frame's best s~ - E. The products
of the rounded inputs are formed in float64, as an int8 GEMM's integer sums would give them.
Run: .venv/bin/python docs/runs/intel_xeon_s20/int8_screen.py"""

import torch

from ditflow_fast.backends.layout import concat_heads
from ditflow_fast.bench.cases import CaseSpec, make_inputs

spec = CaseSpec("cpu", "argmax", "cpu-5b", "float32", "cpu", 0)
g = spec.geometry
q, k = (concat_heads(t, g.text_tokens, torch.float64)[0] for t in make_inputs(spec))


def int8(x):
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(x / scale) * scale


def bf16(x):
    return x.float().bfloat16().double()


hw = g.height * g.width
for name, rounded in (("int8", int8), ("bf16", bf16)):
    qr, kr = rounded(q), rounded(k)
    s = qr @ kr.t()
    bound = q.norm(dim=1)[:, None] * (k - kr).norm(dim=1)[None] + (q - qr).norm(dim=1)[:, None] * kr.norm(dim=1)[None]
    s, bound = s.view(len(q), g.frames, hw), bound.view(len(q), g.frames, hw)
    floor = (s - bound).amax(dim=2, keepdim=True)
    kept = (s + bound >= floor).sum(dim=2)
    spread = (q @ k.t()).view(len(q), g.frames, hw).std(dim=2).mean()
    print(f"{name}: bound / score spread {(bound.mean() / spread):.3f}; keys kept per (query, frame) "
          f"mean {kept.double().mean():.1f} of {hw}, {int(kept.sum()):,} in all")
