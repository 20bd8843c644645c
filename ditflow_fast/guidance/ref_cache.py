"""A disk cache of what a transfer computes from the reference video alone: one reference, many prompts.

Two entries per reference, each a safetensors file named by a hash of everything that determines it:

- ``latent-<hash>.safetensors``: the VAE's (seeded) sample of the reference's latent. Key: the
  decoded frames' digest, the model's fingerprint (``run_key.model_digest``), the family, dtype,
  device type, seed, frames/height/width, VAE tiling/slicing, torch's version.
- ``targets-<hash>.safetensors``: the guidance targets (``losses.reference`` per guidance block:
  DiTFlow's argmax AMF, or MOFT's/SMM's), computed from the clean latent at t = 0 with the empty
  prompt. Key: the reference latent's bytes, the empty-prompt embedding's bytes, the model, the
  expert, family, dtype, device type, guidance blocks, loss, MOFT's proportion, AMF backend, token
  grid, torch's version.

The full key (json) is stored in the file's metadata and compared on every read: a file whose key
differs (a hash collision, a file copied from elsewhere, an edit) or that cannot be read is never
used; it is recomputed and replaced. Writes are atomic (``ditflow_fast.atomic``), so concurrent
runs on one reference at worst compute the same entry twice. The cached tensors are the exact
tensors a run without the cache computes, so a run's result does not depend on the cache (the run
key does not include it). A failed write (disk full, read-only) is logged and the run goes on.

Usage: ``ditflow-fast transfer --ref-cache DIR`` (and ``ditflow-fast batch``, which caches in
``OUT/.ref_cache`` unless told otherwise); from Python ``Guide(..., ref_cache=RefCache(DIR, model=...))``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

FORMAT = 1


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (any dtype, any device)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class RefCache:
    """Reference latents and targets on disk under ``root``; ``model``: a fingerprint of the model
    (``run_key.model_digest``, or anything that changes whenever the weights do).

    ``events`` lists what happened, in order: ``{"kind", "hash", "hit", "seconds"}`` (and ``"error"``
    when a write failed); :meth:`summary` is what a run records."""

    def __init__(self, root, *, model: str, context: dict | None = None):
        self.root = Path(root).expanduser()
        self.context = {"model": str(model), "torch": torch.__version__, "format": FORMAT, **(context or {})}
        self.events: list[dict] = []

    # -- keys and files ---------------------------------------------------------------------------
    def key(self, kind: str, parts: dict) -> tuple[str, str]:
        full = json.dumps({"kind": kind, **self.context, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(full.encode()).hexdigest()[:32], full

    def path(self, kind: str, digest: str) -> Path:
        return self.root / f"{kind}-{digest}.safetensors"

    @staticmethod
    def _read(path: Path, full: str) -> dict[str, torch.Tensor] | None:
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != full:
                    return None  # never trusted when the key differs
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        except Exception:  # noqa: BLE001 - a damaged file: recompute and replace it
            return None

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], full: str) -> str | None:
        from ..atomic import write_safetensors

        try:
            write_safetensors(path, {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, {"key": full})
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def get(self, kind: str, parts: dict, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The cached tensors of ``(kind, parts)``, or ``compute()``'s, stored for next time."""
        digest, full = self.key(kind, parts)
        path = self.path(kind, digest)
        t0 = time.perf_counter()
        got = self._read(path, full)
        event = {"kind": kind, "hash": digest, "hit": got is not None}
        if got is None:
            got = compute()
            err = self._write(path, got, full)
            if err is not None:
                event["error"] = f"not cached: {err}"
        event["seconds"] = round(time.perf_counter() - t0, 4)
        self.events.append(event)
        return got

    # -- the two entries --------------------------------------------------------------------------
    def latent(self, parts: dict, compute: Callable[[], torch.Tensor], device=None) -> torch.Tensor:
        """The reference latent for ``parts`` (see the module docstring for what they must hold)."""
        got = self.get("latent", parts, lambda: {"latent": compute()})["latent"]
        return got if device is None else got.to(device)

    def targets_for(self, guide, expert: str, compute: Callable[[], dict[int, dict[str, torch.Tensor]]]):
        """``Guide.reference_targets``'s value for ``expert``, keyed by the guide's reference latent,
        empty-prompt embedding and the settings that change the targets."""
        cfg = guide.cfg
        tr = guide.experts[expert]
        parts = {"latent": tensor_digest(guide.ref), "empty": tensor_digest(guide.empty), "expert": expert,
                 "family": guide.family.name, "transformer": dict(getattr(tr, "config", {}) or {}),
                 "dtype": str(guide.dtype), "device": guide.device.type, "blocks": list(cfg.guidance_blocks),
                 "loss": cfg.loss, "prop_motion": cfg.prop_motion, "backend": cfg.backend,
                 "grid": [guide.frames, guide.h, guide.w]}
        if not cfg.amf_rope:  # absent at the default: caches written before the option stay valid
            parts["amf_rope"] = False
        if getattr(guide, "forward_inputs", None):  # e.g. HunyuanVideo's embedded guidance scale
            parts["forward_inputs"] = guide.forward_inputs
        if getattr(guide, "ref_kw", None):  # an image-to-video model's inputs for the reference's own first frame
            parts["image_inputs"] = {k: tensor_digest(v) if torch.is_tensor(v) else repr(v)
                                     for k, v in sorted(guide.ref_kw.items())}

        def flat():
            return {f"{b}/{name}": t for b, d in compute().items() for name, t in d.items()}

        got = self.get("targets", parts, flat)
        out: dict[int, dict[str, torch.Tensor]] = {}
        for k in sorted(got):
            b, name = k.split("/", 1)
            out.setdefault(int(b), {})[name] = got[k].to(guide.device)
        return out

    def summary(self) -> dict:
        return {"dir": str(self.root), "events": list(self.events),
                "hits": sum(e["hit"] for e in self.events), "misses": sum(not e["hit"] for e in self.events)}
