"""The CPU kernel's multi-ISA clones hold their hot loops (csrc/amf_cpu_tiling.h, AMF_INLINE).

A function built with ``target_clones`` only runs AVX-512 code if the loop is compiled inside it. Until
session 15 the soft reduction and the logit-gradient pass were template bodies that GCC emitted once,
out of line, for the baseline ISA, and every clone called that SSE2 copy. Such a copy shows in the
extension's symbol table, so this looks there (``nm``); it skips where the build has no symbols to read.
"""

import shutil
import subprocess

import pytest

from ditflow_fast import _native

# the bodies that must exist only inside the clones
HOT_BODIES = ("reduce_tile_impl", "logit_grads_impl", "soft_block<float", "dot_impl", "dot2_impl")


def _symbols() -> str:
    if _native.why_unavailable() is not None:
        pytest.skip(f"cpu backend unavailable: {_native.why_unavailable()}")
    _native.load()
    path = _native.prebuilt_path()
    if path is None or shutil.which("nm") is None:
        pytest.skip("no prebuilt extension or no nm to read it")
    out = subprocess.run(["nm", "-C", str(path)], capture_output=True, text=True, check=False).stdout
    if "reduce_tile_f32" not in out:
        pytest.skip("the extension's symbols are stripped")
    return out


def test_the_clones_exist():
    out = _symbols()
    for clone in ("reduce_tile_f32", "logit_grads_f32", "logit_grads_bf16"):
        assert f"{clone}(" in out and "arch_x86_64_v4" in out, clone


@pytest.mark.parametrize("body", HOT_BODIES)
def test_no_out_of_line_copy_of_a_hot_loop(body):
    copies = [line for line in _symbols().splitlines() if body in line]
    assert not copies, f"an out-of-line copy runs at the baseline ISA for every clone: {copies}"
