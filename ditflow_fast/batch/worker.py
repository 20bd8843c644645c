"""The long-lived worker of ``ditflow-fast batch``: one per GPU (or per ``--workers`` CPU slot).

A plain class, made a Ray actor by the driver (``ray.remote(TransferWorker)``), so it can also be
used and tested without Ray. It holds the models it loaded, keyed by (model reference, its
fingerprint, dtype), at most ``max_models`` of them (least recently used goes first), and runs one
job at a time through :func:`ditflow_fast.cli.transfer.run_transfer` with a loader that hands the
held model over. Before a held model is handed over again, what a run leaves on it is undone: the
guidance processors and hooks, Wan's token-chunked FFN, gradient checkpointing, VAE tiling and
slicing. Runs with ``--offload`` load their own copy and drop it afterwards (offloading hooks are
not undone).

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


def _reset(fam, comps: dict) -> None:
    from ..families.wan import chunking as wan_chunking

    for name in ("transformer", "transformer_2"):
        tr = comps.get(name)
        if tr is None:
            continue
        fam.uninstall(tr)
        wan_chunking.uninstall(tr)  # the guided backward's FFN slices (a no-op where none were installed)
        if getattr(tr, "is_gradient_checkpointing", False):
            tr.disable_gradient_checkpointing()
        tr.requires_grad_(False)
    vae = comps.get("vae")
    for off in ("disable_tiling", "disable_slicing"):
        if vae is not None and hasattr(vae, off):
            getattr(vae, off)()


class TransferWorker:
    def __init__(self, name: str, threads: int | None = None, max_models: int = 1):
        self.name, self.max_models = name, max(1, int(max_models))
        self.models: OrderedDict = OrderedDict()
        self.loads = 0
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))

    def info(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "models": [list(k) for k in self.models]}

    def _loader(self, cacheable: bool, events: list):
        def load(fam, ref, dtype):
            from ..families import resolve_model_ref
            from ..guidance.run_key import model_digest

            if not cacheable:
                events.append("loaded (offload: not kept)")
                self.loads += 1
                return fam.load(ref, dtype)
            key = (ref, model_digest(*resolve_model_ref(ref)), str(dtype))
            if key in self.models:
                self.models.move_to_end(key)
                comps = self.models[key]
                _reset(fam, comps)
                events.append("held")
                return comps
            while len(self.models) >= self.max_models:
                self.models.popitem(last=False)
                _free()
            comps = fam.load(ref, dtype)
            self.loads += 1
            self.models[key] = comps
            events.append("loaded")
            return comps
        return load

    def run(self, job_id: str, argv: list[str], out: str, fault_after_steps: int | None = None) -> dict:
        """Run one job into ``out``; returns ``{"ok", "seconds", "worker", "model", "record"|"error"}``."""
        from .jobs import transfer_parser

        t0 = time.time()
        events: list[str] = []
        res = {"id": job_id, "worker": self.name, "pid": os.getpid()}
        restore = _fault(fault_after_steps) if fault_after_steps else None
        try:
            from ..cli.transfer import run_transfer

            a = transfer_parser().parse_args([*argv, "--out", out, "--quiet"])
            run_transfer(a, loader=self._loader(a.offload == "none" and not a.cpu_offload, events))
            import json
            from pathlib import Path

            rec = json.loads((Path(out) / "config.json").read_text())
            res.update(ok=True, record={k: rec.get(k) for k in ("result", "seconds", "resumed_from_step", "run_key",
                                                                 "ref_cache")})
        except Exception as exc:  # noqa: BLE001 - every error of a job is that job's result
            res.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
        finally:
            if restore is not None:
                restore()
        res.update(seconds=round(time.time() - t0, 3), model=events[-1] if events else None)
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
