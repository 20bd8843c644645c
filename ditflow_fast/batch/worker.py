"""The long-lived worker of ``ditflow-fast batch``: one per GPU (or per ``--workers`` CPU slot).

A plain class, made a Ray actor by the driver (``ray.remote(TransferWorker)``), so it can also be
used and tested without Ray. It holds :class:`~ditflow_fast.transfer_api.HeldModel`\\ s keyed by
(model reference, its fingerprint, dtype), at most ``max_models`` of them (least recently used goes
first), and runs one job at a time through :func:`ditflow_fast.transfer_api.run`, which resets a held
model before it is used again (``HeldModel.reset``). Runs with ``offload``/``cpu_offload`` get their
own copy, dropped afterwards (offloading hooks are not undone).

A job's ordinary errors (a broken video, a wrong size, an out-of-memory) come back as a result
with ``error`` set; only the death of the worker's process is left to the driver, which retries
the job on another worker, resuming from the job's saved state.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections import OrderedDict

RECORD = ("result", "seconds", "resumed_from_step", "run_key", "ref_cache", "image")


class TransferWorker:
    def __init__(self, name: str, threads: int | None = None, max_models: int = 1):
        self.name, self.max_models = name, max(1, int(max_models))
        self.models: OrderedDict = OrderedDict()  # (ref, fingerprint, dtype) -> HeldModel
        self.loads = 0
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))

    def info(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "models": [list(k) for k in self.models]}

    def _held(self, model: str, dtype: str | None, keep: bool):
        """``(the HeldModel for model and dtype, whether it was held already)``; kept only when ``keep``."""
        from ..transfer_api import HeldModel

        held = HeldModel(model)
        if not keep:
            return held, False
        # the folder's fingerprint in the key: a model rewritten in place is loaded again
        key = (held.ref, held.digest(), dtype or "")
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key], True
        while len(self.models) >= self.max_models:
            self.models.popitem(last=False)[1].release()
            _free()  # before the next load, not after it
        self.models[key] = held
        return held, False

    def run(self, job_id: str, options: dict, out: str, fault_after_steps: int | None = None) -> dict:
        """Run one job (its options as :func:`~ditflow_fast.batch.jobs.split` takes them) into ``out``;
        returns ``{"ok", "seconds", "worker", "model", "record"|"error"}``."""
        from ..transfer_api import run
        from .jobs import split

        t0 = time.time()
        res = {"id": job_id, "worker": self.name, "pid": os.getpid()}
        held, model = None, None
        restore = _fault(fault_after_steps) if fault_after_steps else None
        try:
            inputs, opts = split(options)
            keep = opts.offload == "none" and not opts.cpu_offload
            held, was_held = self._held(inputs.pop("model"), opts.dtype, keep)
            loads = held.loads
            try:
                result = run(held, inputs.pop("video"), opts, out=out, bar=False, **inputs)
            finally:
                self.loads += held.loads - loads
                model = ("loaded" if keep else "loaded (offload: not kept)") if held.loads > loads else (
                    "held" if was_held else None)
                if not keep:
                    held.release()
            res.update(ok=True, record={k: result.record.get(k) for k in RECORD})
        except Exception as exc:  # noqa: BLE001 - every error of a job is that job's result
            res.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
        finally:
            if restore is not None:
                restore()
        res.update(seconds=round(time.time() - t0, 3), model=model)
        return res


def _free() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _fault(after_steps: int):
    """Fault injection for tests (``DITFLOW_FAST_BATCH_FAULT=<job id>:<steps>`` on the driver): this
    process is killed with SIGKILL right after the job's state of step ``after_steps`` is saved."""
    from ..guidance import loop

    real = loop.Guide._save_state

    def dying(self, state_dir, next_step, *a, **k):
        real(self, state_dir, next_step, *a, **k)
        if state_dir is not None and next_step >= after_steps:
            os.kill(os.getpid(), signal.SIGKILL)

    loop.Guide._save_state = dying

    def restore():
        loop.Guide._save_state = real
    return restore
