"""Optimised positional embeddings, one safetensors file per guided timestep, and their validation.

File ``emb_t{timestep:04d}.safetensors`` holds tensor ``emb`` (float32): RoPE ``[2, 2, F*h*w, head_dim]``
((query, key) x (cos, sin)) for RoPE models, or the video part of the additive table ``[F*h*w, D]`` otherwise. Its
metadata records ``kind`` (``rope``/``posemb``), ``model`` (id or path), ``fingerprint`` (the
transformer config entries that fix the embedding's meaning), ``shape``, ``timestep``, ``timesteps``
(all guided timesteps of the run) and the latent ``frames``/``height``/``width``. Injection checks
every one of them against the model and the run and names the mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..atomic import write_safetensors

# RoPE tables are cosines and sines, additive tables of the order of the hidden states; an optimised
# one far beyond this is broken (and would overflow half precision into a black video).
EMB_LIMIT = 1e4


class EmbeddingError(ValueError):
    """Saved embeddings missing or not matching the model or the run."""


def fingerprint(transformer) -> str:
    """The family's fingerprint of what fixes an embedding's meaning (config entries, family)."""
    from ..families import family_of

    return family_of(transformer).emb_fingerprint(transformer)


def kind_of(transformer) -> str:
    from ..families import family_of

    return family_of(transformer).emb_kind(transformer)


def file_for(directory, timestep: int) -> Path:
    return Path(directory) / f"emb_t{int(timestep):04d}.safetensors"


def save_embedding(directory, emb: torch.Tensor, *, timestep: int, timesteps, transformer, model_id: str,
                   latent_shape: tuple[int, int, int], run_key: str | None = None) -> Path:
    """Write one timestep's embedding atomically; returns its path."""
    path = file_for(directory, timestep)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind_of(transformer), "model": str(model_id), "fingerprint": fingerprint(transformer),
            "shape": json.dumps(list(emb.shape)), "timestep": str(int(timestep)),
            "timesteps": json.dumps([int(t) for t in timesteps]),
            "frames": str(latent_shape[0]), "height": str(latent_shape[1]), "width": str(latent_shape[2])}
    if run_key is not None:
        meta["run_key"] = run_key
    return write_safetensors(path, {"emb": emb.detach().float().cpu().contiguous()}, meta)


def load_embeddings(directory, *, timesteps, transformer, latent_shape: tuple[int, int, int],
                    expected_shape: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Load the embedding of every timestep in ``timesteps``, validated; raises :class:`EmbeddingError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EmbeddingError(f"--inject-embeds {directory}: no such folder (save embeddings first with "
                             "--opt-mode emb)")
    kind, fp = kind_of(transformer), fingerprint(transformer)
    out, runs = {}, set()
    for t in timesteps:
        path = file_for(directory, t)
        if not path.exists():
            have = sorted(p.name for p in directory.glob("emb_t*.safetensors"))
            raise EmbeddingError(f"--inject-embeds {directory}: no embedding for timestep {int(t)} ({path.name}); "
                                 f"found {have or 'none'}: saved with a different step count or schedule?")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("emb")
        except Exception as exc:
            raise EmbeddingError(f"--inject-embeds {path}: unreadable ({exc})") from exc
        checks = [("kind", meta.get("kind"), kind),
                  ("model", meta.get("fingerprint"), fp),
                  ("latent size", tuple(int(meta.get(k, -1)) for k in ("frames", "height", "width")),
                   tuple(latent_shape)),
                  ("shape", tuple(emb.shape), tuple(expected_shape))]
        for name, got, want in checks:
            if got != want:
                extra = f" (saved for model {meta.get('model')!r})" if name == "model" else ""
                raise EmbeddingError(f"--inject-embeds {path}: {name} mismatch: saved {got}, this run needs "
                                     f"{want}{extra}")
        bad = ~torch.isfinite(emb)
        if bad.any() or emb.abs().max() > EMB_LIMIT:
            what = f"{int(bad.sum())} non-finite values" if bad.any() else f"max |x| = {float(emb.abs().max()):.3g}"
            raise EmbeddingError(f"--inject-embeds {path}: tensor 'emb' holds {what} (a positional embedding "
                                 f"stays within +-{EMB_LIMIT:g}); not injecting it")
        runs.add(meta.get("run_key"))
        out[int(t)] = emb
    if len(runs) > 1:
        raise EmbeddingError(f"--inject-embeds {directory}: the files come from {len(runs)} different runs "
                             "(their run keys differ); save them again into an empty folder")
    return out
