"""What a transfer checks before it loads or writes anything: the device, ``--out`` and
the result's name there, and the model's configs (read without its weights)."""

from __future__ import annotations

from pathlib import Path

RESULT_NAMES = {"mp4": "result.mp4", "gif": "result.gif", "frames": "result_frames"}
# what a run writes under --out besides its result (amf/: the viewer)
WRITTEN = ("state.safetensors", "embeds", "amf", "config.json")


def check_device(device: str | None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device {device!r}: not a device torch knows ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: the guidance loop runs on cpu or cuda")
    return dev


def check_out(out, fmt: str) -> Path:
    """``--out`` usable, no link where the run writes, and the result's name free for its kind, before any work."""
    import os

    from ..atomic import check_writable

    out = Path(out).expanduser()
    check_writable(out, option="--out", folder=True)
    for name in (RESULT_NAMES[fmt], *WRITTEN):
        if (out / name).is_symlink():  # a write would go through it (folders) or replace it (files)
            raise ValueError(f"--out {out}: {name} is a symbolic link (to {os.readlink(out / name)}); remove it or "
                             "use another --out")
    result = out / RESULT_NAMES[fmt]
    if fmt == "frames" and result.exists() and not result.is_dir():
        raise ValueError(f"--out {out}: {result.name} exists and is not a folder; remove it or use another --out")
    if fmt != "frames" and result.is_dir():
        raise ValueError(f"--out {out}: {result.name} is a folder; remove it or use another --out")
    return out


def check_inject(inject, out: Path | None, fresh: bool) -> None:
    """``--inject-embeds`` names a folder of saved embeddings that this run's ``--fresh`` would not delete.
    (Whether they fit the model is checked once it is loaded, still before anything is written.)"""
    if inject is None:
        return
    folder = Path(inject).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--inject-embeds {inject}: no such folder (save embeddings first with --opt-mode emb)")
    if not any(folder.glob("emb_t*.safetensors")):
        raise ValueError(f"--inject-embeds {inject}: holds no emb_t*.safetensors (save embeddings first with "
                         "--opt-mode emb)")
    if fresh and out is not None and folder.resolve().is_relative_to((out / "embeds").resolve()):
        raise ValueError(f"--inject-embeds {inject}: --fresh would delete these embeddings from --out {out}; "
                         "copy them elsewhere first, or use another --out")


def model_configs(fam, ref: str) -> tuple[dict, dict]:
    """The transformer's and the VAE's configs, read without loading any weights."""
    import diffusers

    from ..errors import cannot_load

    out = []
    for cls, sub in ((fam.transformer_class, "transformer"), (fam.vae_class, "vae")):
        try:
            cfg = getattr(diffusers, cls).load_config(ref, subfolder=sub)
        except Exception as exc:  # noqa: BLE001 - hub/format errors come in many types
            raise cannot_load(ref, exc, f": no readable {sub}/config.json") from exc
        out.append({k: v for k, v in cfg.items() if not k.startswith("_")})
    return out[0], out[1]


def has_second_expert(fam, ref: str) -> bool:
    """Whether the folder or hub id holds a second expert (Wan2.2 A14B), as the family's loader decides."""
    return bool(fam.has_second_expert(ref))


class _Cfg(dict):
    __getattr__ = dict.get


def with_config(d: dict):
    from types import SimpleNamespace

    return SimpleNamespace(config=_Cfg(d))
