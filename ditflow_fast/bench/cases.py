"""The benchmark cases, defined once: ``ditflow-fast bench``, the memory probe subprocess and the
pytest-benchmark suites in ``benchmarks/`` all build their timed callables here.

A case is one implementation in one mode on one preset:

* ``impl``: a registered backend name (``ditflow_fast.dispatch.backends()``), ``"research"``
  (:func:`ditflow_fast.backends.reference.research_procedure`, the original code's procedure),
  ``"gemm"`` (the bare heads-concatenated ``Q_cat @ K_cat^T``: the floor), or a peer
  (see :mod:`ditflow_fast.bench.peers`);
* ``mode``: ``"argmax"`` or ``"soft"`` (forward only, no autograd graph) or ``"soft_fwd_bwd"``
  (soft forward plus backward with a fixed random upstream gradient); the floor's mode is ``"gemm"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from .presets import Preset, get_preset

MODES = ("argmax", "soft", "soft_fwd_bwd")
RESEARCH = "research"
FLOOR = "gemm"
TEMPERATURE = 2.0  # DiTFlow's tau; it does not change the cost


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to rebuild a case in another process (the memory probe)."""

    impl: str
    mode: str
    preset: str
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    # (frames, height, width) in place of the preset's: the reduced problem of the reference check.
    shape: tuple[int, int, int] | None = None

    @property
    def kind(self) -> str:
        from .peers import PEERS

        if self.impl == RESEARCH:
            return "research"
        if self.impl == FLOOR:
            return "floor"
        return "peer" if self.impl in PEERS else "backend"

    @property
    def id(self) -> str:
        return f"{self.impl}-{self.mode}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    @property
    def geometry(self) -> Preset:
        p = get_preset(self.preset)
        if self.shape is None:
            return p
        f, h, w = self.shape
        return replace(p, frames=f, height=h, width=w,
                       summary=f"{p.name} reduced to F={f}, h x w={h}x{w} (N={f * h * w:,})")

    def reduced(self, frames: int, height: int, width: int) -> CaseSpec:
        """The same case (impl, mode, dtype, device, heads, head size, text prefix) on fewer frames/patches."""
        p = get_preset(self.preset)
        same = (frames, height, width) == (p.frames, p.height, p.width)
        return replace(self, shape=None if same else (frames, height, width))

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["shape"] is None:
            del d["shape"]  # the timed rows run the preset itself
        return d


def parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def make_inputs(spec: CaseSpec, *, requires_grad: bool = False, empty: bool = False):
    """``q, k`` of shape ``[1, H, text + N, d]`` for the preset (seeded normal; ``empty`` skips filling)."""
    p = spec.geometry
    shape = (1, p.heads, p.text_tokens + p.tokens, p.head_dim)
    kw = dict(dtype=spec.torch_dtype, device=spec.device)
    if empty:
        return torch.empty(shape, **kw), torch.empty(shape, **kw)
    gen = torch.Generator(device=spec.device).manual_seed(spec.seed)
    q = torch.randn(shape, generator=gen, **kw).requires_grad_(requires_grad)
    k = torch.randn(shape, generator=gen, **kw).requires_grad_(requires_grad)
    return q, k


def floor_dtype(spec: CaseSpec) -> torch.dtype:
    """The GEMM floor runs in what a fused kernel would accumulate from: the input dtype on a GPU
    (tensor cores), float32 on the CPU (the CPU backends compute in float32)."""
    if spec.device.startswith("cuda") or spec.torch_dtype == torch.float64:
        return spec.torch_dtype
    return torch.float32


def _concat(t: torch.Tensor, p: Preset, dtype: torch.dtype) -> torch.Tensor:
    return t[0, :, p.text_tokens:].permute(1, 0, 2).reshape(p.tokens, p.heads * p.head_dim).to(dtype).contiguous()


def skip_reason(spec: CaseSpec) -> str | None:
    """Why this case cannot run here (a backend's refusal, a missing peer package), or None."""
    from .peers import PEERS, peer_modes, peer_unavailable

    if spec.impl in (RESEARCH, FLOOR):
        return None
    if spec.impl in PEERS:
        if spec.mode not in peer_modes(spec.impl):
            return f"peer {spec.impl!r} has no {spec.mode!r} mode"
        return peer_unavailable(spec.impl, spec)
    from .. import api  # noqa: F401  (registers the built-in backends and any optional ones)
    from .._problem import validate
    from ..dispatch import backends

    p = spec.geometry
    q, k = make_inputs(spec, empty=True)
    mode = "argmax" if spec.mode == "argmax" else "soft"
    problem = validate(q, k, frames=p.frames, height=p.height, width=p.width, temperature=TEMPERATURE,
                       mode=mode, text_tokens=p.text_tokens)
    why = backends()[spec.impl].refusals(problem, needs_grad=spec.mode == "soft_fwd_bwd")
    return "; ".join(why) or None


def upstream_grad(spec: CaseSpec, device) -> torch.Tensor:
    """The fixed random upstream gradient of a soft fwd+bwd case, float32, in the case's output layout
    (the research code's ``[F*F, hw, 2]``, everything else the package's ``[1, F, F, hw, 2]``)."""
    p = spec.geometry
    lead = (p.frames * p.frames,) if spec.impl == RESEARCH else (1, p.frames, p.frames)
    gen = torch.Generator(device=device).manual_seed(1)
    return torch.randn((*lead, p.patches, 2), generator=gen, device=device, dtype=torch.float32)


def _with_backward(forward: Callable, q: torch.Tensor, k: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """Forward plus backward with a fixed random upstream gradient (drawn once, outside the timing)."""

    def run():
        q.grad = k.grad = None
        out = forward()
        out.backward(grad.to(out.dtype))

    return run


def build_forward(spec: CaseSpec):
    """``(forward, q, k)``: the AMF-producing call of an AMF case on its own inputs (built now); ``q`` and
    ``k`` require grad in ``soft_fwd_bwd``. The timed callable and the reference check both run it."""
    p = spec.geometry
    if spec.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {spec.mode!r}")
    q, k = make_inputs(spec, requires_grad=spec.mode == "soft_fwd_bwd")
    if spec.impl == RESEARCH:
        from ..backends.reference import research_procedure

        def forward():
            return research_procedure(q, k, h=p.height, w=p.width, temp=TEMPERATURE, nframes=p.frames,
                                      argmax=spec.mode == "argmax", text_tokens=p.text_tokens)
        return forward, q, k
    from .peers import PEERS, build_peer

    if spec.impl in PEERS:
        return build_peer(spec, q, k), q, k
    from ..api import compute_amf

    mode = "argmax" if spec.mode == "argmax" else "soft"

    def forward():
        return compute_amf(q, k, frames=p.frames, height=p.height, width=p.width, temperature=TEMPERATURE,
                           mode=mode, text_tokens=p.text_tokens, backend=spec.impl)
    return forward, q, k


def build_case(spec: CaseSpec) -> Callable[[], object]:
    """The zero-argument callable that runs ``spec`` once (inputs built now, outside any timing)."""
    p = spec.geometry
    if spec.impl == FLOOR:
        q, k = make_inputs(spec)
        qc, kc = _concat(q, p, floor_dtype(spec)), _concat(k, p, floor_dtype(spec))
        del q, k
        return lambda: torch.mm(qc, kc.t())
    forward, q, k = build_forward(spec)
    if spec.mode == "soft_fwd_bwd":
        return _with_backward(forward, q, k, upstream_grad(spec, q.device))

    def run_no_grad():
        with torch.no_grad():
            return forward()

    return run_no_grad


def plan_cases(preset: str, *, impls: list[str], modes: tuple[str, ...] = MODES, dtype: str = "float32",
               device: str = "cpu", seed: int = 0) -> list[CaseSpec]:
    """The floor, then per mode the research row and each of ``impls`` (backends and peers)."""
    get_preset(preset)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"modes must be among {MODES}, got {m!r}")
    from .peers import PEERS, peer_modes

    specs = [CaseSpec(FLOOR, FLOOR, preset, dtype, device, seed)]
    for mode in modes:
        specs.append(CaseSpec(RESEARCH, mode, preset, dtype, device, seed))
        # A peer only appears in the modes it computes (faiss has no soft mode, SDPA no argmax).
        specs.extend(CaseSpec(name, mode, preset, dtype, device, seed) for name in impls
                     if name not in PEERS or mode in peer_modes(name))
    return specs


def known_impls() -> tuple[list[str], list[str]]:
    """(registered backend names, peer names)."""
    from .. import api  # noqa: F401
    from ..dispatch import backends
    from .peers import PEERS

    return list(backends()), list(PEERS)


def resolve_impls(requested: list[str] | None) -> list[str]:
    """Backends and peers to bench: the requested names (checked), or every backend but the
    materialising ``reference`` plus every peer."""
    names, peers = known_impls()
    if requested is None:
        return [n for n in names if n != "reference"] + peers
    unknown = [n for n in requested if n not in names + peers + [RESEARCH, FLOOR]]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(map(repr, unknown))}; known: {', '.join(names + peers)}")
    return [n for n in requested if n not in (RESEARCH, FLOOR)]
