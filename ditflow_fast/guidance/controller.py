"""What every family's guided attention shares: the :class:`GuidanceController` that the processors ask
what to capture, inject or stop, and :class:`StopForward`, the signal that ends a truncated forward.

A family installs its own processors (``families/<name>/attention.py``) and keeps the controller where
:func:`controller_of` finds it (``transformer._ditflow_guidance``). Capture and stop happen only while
the controller is *armed* (inside :func:`ditflow_fast.guidance.forward.run_until`). Under gradient
checkpointing the backward re-runs a block's processor to recompute its saved tensors; the controller
is disarmed by then, so the recomputation neither captures nor stops, while injection (a property of
the whole denoising step) is applied identically.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the transformer once everything the loss needs has been captured."""


@dataclass
class GuidanceController:
    """What the processors of one transformer should do; shared by all of them.

    ``qk_blocks``: blocks whose video q/k are recorded; ``out_blocks``: blocks whose video output
    hidden states are recorded (MOFT/SMM features); ``stop_after``: the block after which the forward
    stops (None: run to the end); ``copy_kv_blocks``: blocks whose video K/V are copied;
    ``inject_kv``: block -> (k, v) ``[1, H, F*h*w, d]`` written over every batch element's video K/V.
    ``batch_index`` picks the recorded batch element (DiTFlow: the last, the conditional one).
    ``qk_rope``: record q/k with their rotary position embedding, as the attention uses them (True), or
    before it, their content alone (False; ``GuidanceConfig.amf_rope``). Attention itself is unchanged.
    """

    qk_blocks: frozenset[int] = frozenset()
    out_blocks: frozenset[int] = frozenset()
    stop_after: int | None = None
    copy_kv_blocks: frozenset[int] = frozenset()
    inject_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    batch_index: int = -1
    qk_rope: bool = True
    armed: bool = False
    qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    out: dict[int, torch.Tensor] = field(default_factory=dict)
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @contextlib.contextmanager
    def no_injection(self):
        """While active, nothing is injected (a measurement of the model itself, e.g. the reference AMF,
        taken in the middle of a guided step whose reference K/V are armed); restored after."""
        saved, self.inject_kv = self.inject_kv, {}
        try:
            yield
        finally:
            self.inject_kv = saved

    def clear_captures(self) -> None:
        """Drop every recorded tensor (frees q/k and the graph hanging off them)."""
        self.qk.clear()
        self.out.clear()
        self.kv.clear()

    def _pick(self, t: torch.Tensor) -> torch.Tensor:
        b = self.batch_index % t.shape[0]
        return t[b:b + 1]

    def qk_record(self, rotated: tuple[torch.Tensor, torch.Tensor], plain: tuple[torch.Tensor, torch.Tensor] | None):
        """The q/k pair to record: ``plain`` (before RoPE) when ``qk_rope`` is off and the processor rotated."""
        return rotated if self.qk_rope or plain is None else plain


def split_rope(rope):
    """``(cos, sin)`` shared by queries and keys (diffusers' form), or ``((cos_q, sin_q), (cos_k, sin_k))``
    (separate query and key RoPE, as DiTFlow optimises them) -> ``(q_rope, k_rope)``."""
    if isinstance(rope[0], (tuple, list)):
        return tuple(rope[0]), tuple(rope[1])
    return rope, rope


def controller_of(transformer) -> GuidanceController:
    """The controller a family's ``install`` attached to ``transformer``."""
    state = getattr(transformer, "_ditflow_guidance", None)
    if state is None:
        raise ValueError("transformer has no guidance processors: install the family's first (family.install)")
    return state[0]


def install_processors(transformer, blocks, processor, video_of, controller: GuidanceController | None = None,
                       attn: str = "attn1") -> GuidanceController:
    """``processor(i, controller)`` on every block's self-attention (the module named ``attn``: ``attn1``, or
    ``attn`` for HunyuanVideo's blocks) and an output hook per block that records the video hidden states
    (``video_of(block output)``) for MOFT/SMM and stops the forward after ``stop_after``.
    Returns the controller (fresh unless given). Idempotent: callers uninstall first."""
    controller = controller or GuidanceController()
    handles = []
    for i, block in enumerate(blocks):
        getattr(block, attn).set_processor(processor(i, controller))
        handles.append(block.register_forward_hook(_output_hook(i, controller, video_of)))
    transformer._ditflow_guidance = (controller, handles)
    return controller


def uninstall_processors(transformer, blocks, stock, attn: str = "attn1") -> None:
    """Remove what :func:`install_processors` added and put ``stock()`` back on every block's ``attn``."""
    state = getattr(transformer, "_ditflow_guidance", None)
    if state is None:
        return
    for h in state[1]:
        h.remove()
    for block in blocks:
        getattr(block, attn).set_processor(stock())
    del transformer._ditflow_guidance


def _output_hook(block_index: int, controller: GuidanceController, video_of):
    def hook(module, args, output):
        ctrl = controller
        if ctrl.armed and block_index in ctrl.out_blocks:
            ctrl.out[block_index] = ctrl._pick(video_of(output))
            if block_index == ctrl.stop_after:
                raise StopForward
        return None

    return hook
