"""Compile the kernels for GPU targets without a GPU, and report their resources.

``python -m ditflow_fast.kernels.compile_check [--arch 80,89,90] [--dtype bf16] [--all-configs]``

Triton compiles to a cubin with its bundled ``ptxas`` for any target, no driver needed. Each
kernel is compiled as a launch would specialise it (unit stride on the last dimension, other
strides and pointers divisible by 16, CogVideoX head size 64) and the report gives the shared
memory, registers, spill bytes, whether the loads were software-pipelined (``cp.async``), and
whether the configuration fits the target's shared memory (A100 sm_80: 163 KB, RTX 4090 sm_89:
99 KB, H100 sm_90: 227 KB per block). That checks the code paths the interpreter does not
(layouts, pipelining, register pressure); it says nothing about speed. Must run in a process
where ``TRITON_INTERPRET`` is unset (triton's library is wrapped for one mode at import).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
GPU = {80: "A100", 86: "RTX 30xx", 89: "RTX 4090", 90: "H100"}


def _variants(dt: str, all_configs: bool):
    """(label, function, signature, constexprs, attrs-divisible-by-16 names, config) per compile."""
    from . import amf_bwd, amf_fwd

    prec = "ieee" if dt == "fp32" else "tf32"

    def first(configs):
        return configs if all_configs else configs[:1]

    ints = dict.fromkeys
    for cfg in first(amf_fwd.FWD_CONFIGS):
        for soft in (True, False):
            sig = {"q_ptr": f"*{dt}", "k_ptr": f"*{dt}", "out_ptr": "*fp32", "lse_ptr": "*fp32",
                   **ints(["sqb", "sqh", "sqt", "skb", "skh", "skt", "text", "F", "HW", "W", "HEADS"], "i32"),
                   "qk_scale": "fp32"}
            const = dict(sqd=1, skd=1, HEAD_DIM=64, SOFT=soft, UPCAST=False, PRECISION=prec, **cfg.kwargs)
            div = ["q_ptr", "k_ptr", "out_ptr", "lse_ptr", "sqb", "sqh", "sqt", "skb", "skh", "skt"]
            yield f"fwd {'soft' if soft else 'argmax'}", amf_fwd.amf_fwd_kernel, sig, const, div, cfg
    ws = dt
    for cfg in first(amf_bwd.DZ_CONFIGS):
        sig = {"q_ptr": f"*{dt}", "k_ptr": f"*{dt}", "lse_ptr": "*fp32", "g_ptr": "*fp32", "go_ptr": "*fp32",
               "ws_ptr": f"*{ws}", **ints(["sqh", "sqt", "skh", "skt", "sgi", "sgj", "sgs"], "i32"),
               **ints(["i0", "text", "F", "HW", "W", "HEADS", "N"], "i32"), "qk_scale": "fp32", "dz_scale": "fp32"}
        const = dict(sqd=1, skd=1, sgc=1, HEAD_DIM=64, UPCAST=False, PRECISION=prec, **cfg.kwargs)
        div = ["q_ptr", "k_ptr", "ws_ptr", "sqh", "sqt", "skh", "skt", "N"]
        yield "bwd dz", amf_bwd.amf_dz_kernel, sig, const, div, cfg
    for cfg in first(amf_bwd.GEMM_CONFIGS):
        for which, unit in (("dQ", "sak"), ("dK", "sar")):
            strides = [s for s in ("sar", "sak") if s != unit]
            sig = {"a_ptr": f"*{ws}", "x_ptr": f"*{dt}", "out_ptr": "*fp32",
                   **ints(strides + ["sxk", "sxh", "sor", "R", "COLS", "KDIM"], "i32"), "out_scale": "fp32"}
            const = {unit: 1, "sxd": 1, "HEAD_DIM": 64, "ACCUMULATE": which == "dK", "UPCAST": False,
                     "PRECISION": prec, **cfg.kwargs}
            div = ["a_ptr", "x_ptr", "out_ptr", "sxk", "sxh", "sor", "COLS"] + strides
            yield f"bwd gemm {which}", amf_bwd.amf_dz_gemm_kernel, sig, const, div, cfg


def _resources(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    path = f"/tmp/ditflow_fast_check_{os.getpid()}.cubin"
    with open(path, "wb") as fh:
        fh.write(cubin)
    try:
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in fields.items()}


def check(archs=(90,), dtype="bf16", all_configs=False, out=sys.stdout) -> list[dict]:
    """Compile every variant for every arch; return one record per compile (and print a table)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._jit import wrap

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: the compile check needs triton's compiled library")
    rows = []
    for arch in archs:
        for label, fn, sig, const, div, cfg in _variants(dtype, all_configs):
            jit = wrap(fn, interpret=False)  # with its helpers, as a launch compiles it
            sig = dict(sig, **dict.fromkeys(const, "constexpr"))
            attrs = {(jit.arg_names.index(n),): [["tt.divisibility", 16]] for n in div}
            compiled = triton.compile(ASTSource(jit, sig, const, attrs), target=GPUTarget("cuda", arch, 32),
                                      options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
            res = _resources(compiled.asm["cubin"])
            row = dict(arch=arch, gpu=GPU.get(arch, "?"), kernel=label, dtype=dtype,
                       tiles="x".join(str(v) for v in cfg.kwargs.values()), warps=cfg.num_warps,
                       stages=cfg.num_stages, shared=compiled.metadata.shared, regs=res.get("reg"),
                       spill=res.get("local", 0) + res.get("stack", 0),
                       pipelined="async_copy" in compiled.asm["ttgir"] or "async_tma" in compiled.asm["ttgir"],
                       fits=compiled.metadata.shared <= SHARED_LIMIT.get(arch, 0))
            rows.append(row)
            print(f"sm_{arch} {row['gpu']:8} {label:13} {dtype} tiles {row['tiles']:10} w{row['warps']} "
                  f"s{row['stages']}  shared {row['shared']:6}  regs {row['regs']}  spill {row['spill']}  "
                  f"pipelined {row['pipelined']}  fits {row['fits']}", file=out, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="90", help="comma-separated SM versions, e.g. 80,89,90")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--all-configs", action="store_true", help="every autotune config, not the first of each")
    args = ap.parse_args(argv)
    rows = check([int(a) for a in args.arch.split(",")], args.dtype, args.all_configs)
    # A config that does not fit is pruned by the autotuner; the first (default) one must fit.
    return 0 if all(r["regs"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
