"""How many keys an exact int8 (or bf16) screen leaves to rescore, at the cpu-5b shape (random normal q, k).

``OMP_NUM_THREADS=1 python docs/runs/gemm_floors/int8_screen.py`` (output: int8_screen.txt beside it).
"""

import torch

torch.manual_seed(0)
n, d, frames = 1320, 3072, 4
q, k = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)


def quant_int8(x):
    s = x.abs().amax(1, keepdim=True) / 127
    xi = (x / s).round()
    return xi * s


def quant_bf16(x):
    return x.float().bfloat16().double()


for name, quant in (("int8 per-row", quant_int8), ("bf16", quant_bf16)):
    qt, kt = quant(q), quant(k)
    s = qt @ kt.T
    e = (q - qt).norm(dim=1)[:, None] * k.norm(dim=1)[None] + qt.norm(dim=1)[:, None] * (k - kt).norm(dim=1)[None]
    hw = n // frames
    lo = (s - e).view(n, frames, hw).amax(-1, keepdim=True)
    cand = ((s + e).view(n, frames, hw) >= lo).sum(-1).double()
    exact = (q @ k.T).view(n, frames, hw).argmax(-1)
    kept = ((s + e).view(n, frames, hw) >= lo).gather(-1, exact[..., None]).all()
    sd = (q @ k.T).std()
    print(f"{name}: bound/score-std {e.mean() / sd:.3f}; candidates per (row, frame) mean {cand.mean():.1f} of {hw}, "
          f"decided (1 candidate) {(cand == 1).double().mean():.3f}; true argmax always kept: {bool(kept)}")
