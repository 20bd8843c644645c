"""The truncated forward of guidance, shared by every family.

The truncated forward does not copy diffusers' forward: it arms the controller and calls the
transformer as usual; the processor (or the block's output hook) raises :class:`StopForward` once
the last guidance block has produced what the loss needs, and this module catches it. Nothing
after that point runs (later blocks, ``norm_final``, ``norm_out``, ``proj_out``).

Gradient checkpointing: diffusers checkpoints each block with ``use_reentrant=False``; torch throws
the stop into the checkpoint's context so its hooks unwind. In the backward, torch recomputes the
stopped block only up to its last saved tensor (early stop, forced on here), which lies before
the raise; the controller is disarmed by then anyway, so recomputation never stops nor captures.
"""

from __future__ import annotations

from torch.utils.checkpoint import set_checkpoint_early_stop

from .controller import GuidanceController, StopForward, controller_of


def run_until(transformer, *, stop_after: int | None, qk_blocks=(), out_blocks=(), copy_kv_blocks=(), call=None,
              n_blocks: int | None = None, qk_rope: bool = True, **model_kwargs) -> GuidanceController:
    """Run ``transformer`` and record what is asked; stop after block ``stop_after`` (None: run all).

    The forward is ``call()`` when given (a family's own call, e.g. Wan's), else
    ``transformer(**model_kwargs, return_dict=False)`` (CogVideoX's keywords: ``hidden_states``,
    ``encoder_hidden_states``, ``timestep``, ``image_rotary_emb``); ``n_blocks`` defaults to
    ``len(transformer.transformer_blocks)``; ``qk_rope``: q/k recorded with their RoPE or before it
    (:class:`GuidanceController`). Returns the controller, whose ``qk`` / ``out`` / ``kv``
    dicts hold the records (block -> tensors). The transformer's own output is discarded.
    """
    ctrl = controller_of(transformer)
    n_blocks = len(transformer.transformer_blocks) if n_blocks is None else n_blocks
    wanted = set(qk_blocks) | set(out_blocks) | set(copy_kv_blocks)
    for b in wanted | ({stop_after} if stop_after is not None else set()):
        if not 0 <= b < n_blocks:
            raise ValueError(f"block index {b} out of range: the transformer has {n_blocks} blocks")
    if stop_after is not None and wanted and stop_after < max(wanted):
        raise ValueError(f"stop_after={stop_after} comes before block {max(wanted)}, whose records are wanted")
    if call is None:
        def call():
            return transformer(**model_kwargs, return_dict=False)
    ctrl.clear_captures()
    ctrl.qk_blocks, ctrl.out_blocks = frozenset(qk_blocks), frozenset(out_blocks)
    ctrl.copy_kv_blocks, ctrl.stop_after = frozenset(copy_kv_blocks), stop_after
    ctrl.qk_rope = bool(qk_rope)
    ctrl.armed = True
    stopped = False
    try:
        with set_checkpoint_early_stop(True):
            call()
    except StopForward:
        stopped = True
    finally:
        ctrl.armed = False
        ctrl.qk_blocks = ctrl.out_blocks = ctrl.copy_kv_blocks = frozenset()
        ctrl.stop_after = None
        ctrl.qk_rope = True
    if stop_after is not None and not stopped:
        raise RuntimeError(f"the forward never reached guidance block {stop_after}")
    return ctrl
