"""The registry of benchmark rows: every implementation ``ditflow-fast bench`` can time, as a :class:`Row`.

A row says which modes it computes, whether it can run on this machine (``unavailable``: None or
why not, as an AMF backend's), how to build its callable for a case (``fwd``; ``fwd+bwd`` adds the
fixed upstream gradient's backward), and its predicted peak memory where it materialises ``N^2``.
The rows:

* one per AMF backend, built from :func:`ditflow_fast.dispatch.backends` whenever the table is read
  (a backend registered later, a test's included), each calling :func:`ditflow_fast.compute_amf`
  with ``backend=`` its name;
* ``research``: the original code's procedure (:func:`ditflow_fast.backends.reference.research_procedure`);
* ``gemm``: the bare heads-concatenated ``Q_cat @ K_cat^T``, the floor (no AMF, so nothing to check), in
  :func:`floor_dtype`: a bf16 run's ratios are to a bf16 GEMM of the same shape;
* ``gemm_fp32``: the same GEMM in float32, only in CPU runs of bf16 inputs, where the ``torch`` backend (and
  ``cpu`` on a CPU without AVX512-BF16) computes in float32 after one upcast copy (a yardstick beside the floor,
  not the floor);
* ``gemm_onednn``: the float32 GEMM through oneDNN, in CPU float32 runs: where MKL runs its AVX2 code (CPUs not
  Intel's) the ``cpu`` backend's GEMMs go there instead (another yardstick; the ratios stay to ``gemm``);
* the peers of :mod:`ditflow_fast.bench.peers` (``faiss``, ``sdpa``; on request, GPU only: ``keops``,
  ``faiss_gpu``).

:func:`register` adds a row (a peer, a test's deliberately wrong row); :func:`unregister` removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import choose_backend, compute_amf, dispatch
from ..backends.reference import research_bytes, research_procedure
from . import peers
from .spec import (
    FLOOR,
    FLOOR_FP32,
    FLOOR_ONEDNN,
    MODES,
    RESEARCH,
    TEMPERATURE,
    CaseSpec,
    elem_size,
    make_inputs,
    upstream_grad,
)

# Which runs a row joins: every run ("always": the research baseline and the floor the ratios are
# taken against), every run that names no rows ("default"), or only runs that name it ("on request").
SELECTIONS = ("always", "default", "on request")

Forward = Callable[[], torch.Tensor]


def _available() -> str | None:
    return None


def _unbounded(spec: CaseSpec) -> int | None:
    return None


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "backend", "research", "floor", "yardstick", "peer" (a test may add its own); recorded with each row
    summary: str
    modes: tuple[str, ...]
    # (case, q, k) -> the zero-argument call that returns the case's AMF; None for a row with no AMF (the floor).
    make_forward: Callable[[CaseSpec, torch.Tensor, torch.Tensor], Forward] | None = None
    # case -> the zero-argument timed call, for a row with no AMF (the floor builds its own inputs).
    make_timed: Callable[[CaseSpec], Callable[[], object]] | None = None
    unavailable: Callable[[], str | None] = _available
    # case -> why it cannot run that case (dtype, device, gradients); None: only ``unavailable`` can refuse.
    refusals: Callable[[CaseSpec], list[str]] | None = None
    predict_bytes: Callable[[CaseSpec], int | None] = _unbounded
    selection: str = "default"
    # case -> whether an "always" row joins a run of that case's preset, dtype and device (None: every run)
    applies: Callable[[CaseSpec], bool] | None = None
    # The modes a run lists the row in: its own, or for a backend every mode, so that a mode it lacks
    # appears as the backend's own refusal ("has no backward") instead of silently missing.
    listed_modes: tuple[str, ...] | None = None
    # The reference check's tolerance: "spec" (docs/amf.md Agreement) or "input-dtype" (the research
    # procedure accumulates in its input dtype; see bench/refcheck.py).
    tolerance: str = "spec"

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"row {self.name!r}: selection must be one of {SELECTIONS}, got {self.selection!r}")
        if (self.make_forward is None) == (self.make_timed is None):
            raise ValueError(f"row {self.name!r} needs exactly one of make_forward (an AMF) and make_timed")

    @property
    def computes_amf(self) -> bool:
        return self.make_forward is not None

    @property
    def planned_modes(self) -> tuple[str, ...]:
        return self.modes if self.listed_modes is None else self.listed_modes

    def skip_reason(self, spec: CaseSpec) -> str | None:
        """Why ``spec`` cannot run here (the row lacks the mode, is unavailable, refuses the case), or None."""
        if spec.mode not in self.planned_modes:
            return f"{self.kind} {self.name!r} has no {spec.mode!r} mode"
        if self.refusals is not None:
            return "; ".join(self.refusals(spec)) or None
        return self.unavailable()

    def predicted_bytes(self, spec: CaseSpec) -> int | None:
        """Predicted peak extra bytes of a materialising row's case; None for the bounded ones."""
        return self.predict_bytes(spec)

    def forward(self, spec: CaseSpec):
        """``(forward, q, k)``: the AMF-producing call on the case's own inputs (built now); ``q`` and ``k``
        require grad in ``soft_fwd_bwd``. The timed callable and the reference check both run it."""
        if spec.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {spec.mode!r}")
        if not self.computes_amf:
            raise ValueError(f"row {self.name!r} produces no AMF")
        q, k = make_inputs(spec, requires_grad=spec.mode == "soft_fwd_bwd")
        return self.make_forward(spec, q, k), q, k

    def build(self, spec: CaseSpec) -> Callable[[], object]:
        """The zero-argument callable that runs ``spec`` once (inputs built now, outside any timing)."""
        if self.make_timed is not None:
            return self.make_timed(spec)
        forward, q, k = self.forward(spec)
        if spec.mode == "soft_fwd_bwd":
            return _with_backward(forward, q, k, upstream_grad(spec, q.device))

        def run_no_grad():
            with torch.no_grad():
                return forward()

        return run_no_grad


def _with_backward(forward: Forward, q: torch.Tensor, k: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """Forward plus backward with a fixed random upstream gradient (drawn once, outside the timing)."""

    def run():
        q.grad = k.grad = None
        out = forward()
        out.backward(grad.reshape(out.shape).to(out.dtype))

    return run


# --- the AMF backends ------------------------------------------------------------------------------

def _backend_forward(name: str):
    def make(spec: CaseSpec, q: torch.Tensor, k: torch.Tensor) -> Forward:
        g = spec.geometry

        def forward():
            return compute_amf(q, k, frames=g.frames, height=g.height, width=g.width, temperature=TEMPERATURE,
                               mode=spec.amf_mode, text_tokens=g.text_tokens, backend=name)
        return forward

    return make


def _backend_refusals(name: str):
    """The dispatcher's own reasons, asked through :func:`ditflow_fast.choose_backend` on empty inputs."""
    def refusals(spec: CaseSpec) -> list[str]:
        g = spec.geometry
        q, k = make_inputs(spec, empty=True, requires_grad=spec.mode == "soft_fwd_bwd")
        try:
            with torch.enable_grad():
                choose_backend(q, k, frames=g.frames, height=g.height, width=g.width, temperature=TEMPERATURE,
                               mode=spec.amf_mode, text_tokens=g.text_tokens, backend=name)
        except ValueError as exc:
            return [str(exc).removeprefix(f"backend {name!r} cannot run this input: ")]
        return []

    return refusals


def _reference_bytes(spec: CaseSpec) -> int:
    """The float64 oracle materialises the research pattern (``[H, N, N]`` scores and their copies) in float64."""
    g = spec.geometry
    extra = 12 if spec.mode == "soft_fwd_bwd" else 4
    return (2 * g.heads + extra) * g.tokens * g.tokens * 8


# Backends benched only when named: the float64 oracle materialises [B, H, N, N] and is the reference itself.
_BACKEND_BENCH = {"reference": {"selection": "on request", "predict_bytes": _reference_bytes}}


def _backend_row(b: dispatch.Backend) -> Row:
    modes = tuple(m for m, needs in (("argmax", "argmax"), ("soft", "soft"), ("soft_fwd_bwd", "soft"))
                  if needs in b.modes and (m != "soft_fwd_bwd" or b.differentiable))
    return Row(name=b.name, kind="backend", summary=b.summary, modes=modes, make_forward=_backend_forward(b.name),
               unavailable=b.unavailable, refusals=_backend_refusals(b.name), listed_modes=MODES,
               **_BACKEND_BENCH.get(b.name, {}))


# --- the research procedure and the floor ----------------------------------------------------------

def _research_forward(spec: CaseSpec, q: torch.Tensor, k: torch.Tensor) -> Forward:
    g = spec.geometry

    def forward():
        return research_procedure(q, k, h=g.height, w=g.width, temp=TEMPERATURE, nframes=g.frames,
                                  argmax=spec.mode == "argmax", text_tokens=g.text_tokens)
    return forward


def _research_bytes(spec: CaseSpec) -> int:
    g = spec.geometry
    return research_bytes(g.heads, g.frames, g.height, g.width, elem_size(spec.torch_dtype),
                          backward=spec.mode == "soft_fwd_bwd", device=spec.device)


def floor_dtype(spec: CaseSpec) -> torch.dtype:
    """The dtype of the GEMM floor: the input dtype wherever the machine multiplies it natively (tensor
    cores on a GPU; bf16 on a CPU with AVX512-BF16 or AMX, where oneDNN ran a 1320 x 1320 x 3072 bf16
    GEMM at 399 GFLOP/s against 169 in float32, two threads of the AMD EPYC), so the ratios of a bf16 run
    are to a bf16 GEMM of the same shape. float16 on a CPU: float32 (no fp16 units on these CPUs: 45
    GFLOP/s there; a user would upcast)."""
    if spec.device.startswith("cpu") and spec.torch_dtype == torch.float16:
        return torch.float32
    return spec.torch_dtype


def _gemm_operands(spec: CaseSpec, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads-concatenated q and k of batch element 0, [N, H*d] contiguous in ``dtype``."""
    g = spec.geometry
    q, k = make_inputs(spec)

    def concat(t):
        return t[0, :, g.text_tokens:].permute(1, 0, 2).reshape(g.tokens, g.concat_dim).to(dtype).contiguous()

    return concat(q), concat(k)


def _gemm_timed(dtype_of: Callable[[CaseSpec], torch.dtype]):
    def timed(spec: CaseSpec) -> Callable[[], torch.Tensor]:
        qc, kc = _gemm_operands(spec, dtype_of(spec))
        return lambda: torch.mm(qc, kc.t())

    return timed


def _onednn_gemm_timed(spec: CaseSpec) -> Callable[[], torch.Tensor]:
    """The floor's GEMM through oneDNN (``mkldnn_linear`` on oneDNN tensors, made outside the timing; the
    output stays in oneDNN's layout): where MKL runs its AVX2 code (CPUs not Intel's) it is the faster
    float32 GEMM, and the one the ``cpu`` backend's tiles take there (csrc/amf_cpu_gemm.h)."""
    qc, kc = (t.to_mkldnn() for t in _gemm_operands(spec, torch.float32))
    return lambda: torch._C._nn.mkldnn_linear(qc, kc)


def _onednn_yardstick_applies(spec: CaseSpec) -> bool:
    return (spec.device.startswith("cpu") and spec.torch_dtype == torch.float32
            and torch.backends.mkldnn.is_available())


def _float32_yardstick_applies(spec: CaseSpec) -> bool:
    """The float32 GEMM joins CPU runs of bf16 inputs only: there the floor is a bf16 GEMM while the ``torch``
    backend (and ``cpu`` without AVX512-BF16) upcasts to float32 (docs/native.md), so the table shows both."""
    return spec.device.startswith("cpu") and spec.torch_dtype == torch.bfloat16


# --- the registry ----------------------------------------------------------------------------------

_ROWS: dict[str, Row] = {}


def register(row: Row) -> Row:
    """Add ``row``; a name already taken (by a backend or another row) is an error."""
    if row.name in all_rows():
        raise ValueError(f"benchmark row name {row.name!r} is taken")
    _ROWS[row.name] = row
    return row


def unregister(name: str) -> Row:
    """Remove the row :func:`register` added as ``name`` (the backends' rows follow the dispatcher)."""
    if name not in _ROWS:
        raise ValueError(f"no registered benchmark row {name!r}; registered: {', '.join(_ROWS)}")
    return _ROWS.pop(name)


def all_rows() -> dict[str, Row]:
    """Every row by name: the backends in registration order, then the research row, the floor, the peers
    and any rows registered later."""
    table = {name: _backend_row(b) for name, b in dispatch.backends().items()}
    clash = sorted(set(table) & set(_ROWS))
    if clash:
        raise ValueError(f"benchmark row name(s) {', '.join(map(repr, clash))} are also backends")
    return {**table, **_ROWS}


def get(name: str) -> Row:
    """The row called ``name``; ``ValueError`` naming the known rows otherwise."""
    table = all_rows()
    if name not in table:
        raise ValueError(f"unknown benchmark row {name!r}; known rows: {', '.join(table)}")
    return table[name]


register(Row(RESEARCH, "research", "the original DiTFlow code's procedure: per-head scores in the input dtype, "
             "head mean, per-frame softmax or argmax", MODES, make_forward=_research_forward,
             predict_bytes=_research_bytes, selection="always", tolerance="input-dtype"))
register(Row(FLOOR, "floor", "the bare GEMM", (FLOOR,), make_timed=_gemm_timed(floor_dtype), selection="always"))
register(Row(FLOOR_FP32, "yardstick", "the bare GEMM in float32 (torch multiplies bf16 in it)",
             (FLOOR,), make_timed=_gemm_timed(lambda spec: torch.float32), selection="always",
             applies=_float32_yardstick_applies))
register(Row(FLOOR_ONEDNN, "yardstick", "the bare float32 GEMM through oneDNN instead of torch.mm (MKL)", (FLOOR,),
             make_timed=_onednn_gemm_timed, selection="always", applies=_onednn_yardstick_applies))
register(Row("faiss", "peer", "faiss-cpu IndexFlatIP top-1 per target frame", ("argmax",),
             make_forward=lambda spec, q, k: peers.faiss_forward(spec.geometry, q, k),
             unavailable=peers.faiss_unavailable, refusals=lambda spec: peers.faiss_refusals(spec.device)))
# GPU-only peers (issue 31), benched when named (the device check names them): none has run here (no GPU)
register(Row("keops", "peer", "KeOps LazyTensor (x_i | y_j).argmax per target frame (pykeops; GPU only)", ("argmax",),
             make_forward=lambda spec, q, k: peers.keops_forward(spec.geometry, q, k),
             refusals=lambda spec: peers.keops_refusals(spec.device), selection="on request"))
register(Row("faiss_gpu", "peer", "faiss GpuIndexFlatIP top-1 per target frame (faiss-gpu; GPU only)", ("argmax",),
             make_forward=lambda spec, q, k: peers.faiss_gpu_forward(spec.geometry, q, k),
             refusals=lambda spec: peers.faiss_gpu_refusals(spec.device), selection="on request"))
register(Row("sdpa", "peer", "scaled_dot_product_attention with the key coordinates as values",
             ("soft", "soft_fwd_bwd"),
             make_forward=lambda spec, q, k: peers.sdpa_forward(spec.geometry, q, k, TEMPERATURE),
             unavailable=peers.sdpa_unavailable))
