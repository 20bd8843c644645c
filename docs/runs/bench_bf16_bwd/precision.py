"""dQ's error when the logit gradients dz are rounded to bf16, with the keys as they are or centred per frame.

660 queries against 2 frames of 330 keys (D = 512), bf16 q and k whose rows share a common part (correlation c
within the keys, and within the queries). dz is the soft AMF's logit gradient for a random upstream gradient,
formed in float64. Usage: python precision.py (seeded; output in precision.txt).
"""
import torch

N, D, HW = 660, 512, 330


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def case(corr):
    def rows():
        return (corr * torch.randn(1, D) + (1 - corr**2) ** 0.5 * torch.randn(N, D)).bfloat16()

    q, k = rows(), rows()
    p = torch.softmax((q.double() @ k.double().T * 0.05).view(N, -1, HW), -1)
    g = torch.randn(N, p.shape[1], 2, dtype=torch.float64)
    pos = torch.stack([torch.arange(HW) % 22, torch.arange(HW) // 22], -1).double()
    o = p @ pos
    dz = (p * (g @ pos.T - (g * o).sum(-1, keepdim=True))).view(N, -1)
    dq, dk = dz @ k.double(), dz.T @ q.double()
    kf = k.float().view(-1, HW, D)
    centred = (kf - kf.mean(1, keepdim=True)).view(N, D).bfloat16()
    dzb = dz.float().bfloat16()
    return {
        "float32 GEMMs, dQ": rel((dz.float() @ k.float()).bfloat16(), dq),
        "bf16 dz, dQ": rel(dzb @ k, dq),
        "bf16 dz, centred keys, dQ": rel(dzb @ centred, dq),
        "float32 GEMMs, dK": rel((dz.float().T @ q.float()).bfloat16(), dk),
        "bf16 dz, dK": rel(dzb.T @ q, dk),
    }


torch.manual_seed(0)
for corr in (0.0, 0.9, 0.99, 0.999):
    print(f"correlation {corr}: " + ", ".join(f"{name} {err:.2e}" for name, err in case(corr).items()))
