"""What ATen offers for bf16 -> float32 on this CPU: the "bf32" float32-matmul precision setting.

Usage: OMP_NUM_THREADS=2 python aten_bf32.py
"""
import torch
from _timing import median_ms

torch.manual_seed(0)
n, d = 1320, 3072
qb, kb = torch.randn(n, d).bfloat16(), torch.randn(n, d).bfloat16()
q, k = qb.float(), kb.float()


print(torch.__version__, torch.backends.mkldnn.is_available())
ref = q.double() @ k.double().T
print("fp32", median_ms(lambda: torch.mm(q, k.T)), (torch.mm(q, k.T).double() - ref).abs().max().item())
print("bf16", median_ms(lambda: torch.mm(qb, kb.T)))
for attempt in ["new", "old"]:
    try:
        if attempt == "new":
            torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        else:
            torch.set_float32_matmul_precision("medium")
        r = torch.mm(q, k.T)
        print(attempt, "bf32 mm", median_ms(lambda: torch.mm(q, k.T)), (r.double() - ref).abs().max().item(), r.dtype)
        qr = torch.randn(n, d)  # not bf16 values: a bf16 GEMM would round them
        err = (torch.mm(qr, k.T).double() - qr.double() @ k.double().T).abs().max().item()
        print("  non-bf16 input err", err)
    except Exception as e:  # noqa: BLE001 (report whatever this torch build says)
        print(attempt, "fail", e)
