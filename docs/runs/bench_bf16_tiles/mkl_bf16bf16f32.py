"""MKL's cblas_gemm_bf16bf16f32 (exported by libtorch_cpu) against the float32 and bf16 GEMMs, via ctypes.

Usage: OMP_NUM_THREADS=2 python mkl_bf16bf16f32.py
"""
import ctypes
import os

import torch
from _timing import median_ms

torch.manual_seed(0)
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
gemm = lib.cblas_gemm_bf16bf16f32
gemm.restype = None
gemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
m, n, k = 1320, 1320, 3072
a, b, c = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16(), torch.empty(m, n)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def run():
    gemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.0, a.data_ptr(), k, b.data_ptr(), k, 0.0, c.data_ptr(), n)


run()
print("err", (c.double() - a.double() @ b.double().T).abs().max().item())
af, bf = a.float(), b.float()
for _ in range(2):
    print("mkl bf16f32", round(median_ms(run), 1), "fp32", round(median_ms(lambda: af @ bf.T), 1),
          "bf16", round(median_ms(lambda: a @ b.T), 1))
