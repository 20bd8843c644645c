"""diffusers pipeline folders, local or on the hub: what the families' ``load`` and ``memory_config`` read from
them (without weights where they can), with errors naming ``--model``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import cannot_load
from .base import ModelError, foreign_vae, refuse_foreign_vae


def read_model_index(model: str) -> dict:
    """``model_index.json`` of a local folder ({} without one) or a hub id ({} when it cannot be read: a
    transformer-only repository, or offline; the subfolders decide)."""
    local = Path(model).expanduser()
    if local.exists():
        idx = local / "model_index.json"
        if not idx.is_file():
            return {}
        try:
            return json.loads(idx.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"--model {model}: unreadable model_index.json ({exc})") from exc
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model))
    except Exception:  # a transformer-only repo, or offline: the subfolders decide
        return {}


def checked_folder(model: str, what: str, vae_class: str, *, hub_id: bool = True) -> str:
    """``model`` as ``from_pretrained`` takes it: a local folder with ``transformer/`` and ``vae/`` whose VAE is a
    ``vae_class`` (``what``: "a Wan", "an LTX", ... in the error), else, with ``hub_id``, something shaped like a
    hub id (a mistyped path fails here, not in the hub client)."""
    local = Path(model).expanduser()
    if local.exists():
        missing = [s for s in ("transformer", "vae") if not (local / s).is_dir()]
        if missing:
            raise ModelError(f"--model {model}: not {what} diffusers folder (no {', '.join(missing)}/)")
        refuse_foreign_vae(model, vae_class)
        return str(local)
    if hub_id and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise ModelError(f"--model {model}: no such folder, and not a hub id of the form owner/name")
    return model


def refuse_other_pipeline(model: str, index: dict, pipelines: tuple[str, ...], family: str) -> None:
    """A folder whose ``model_index.json`` names another pipeline (image-to-video, ...) is refused by name."""
    cls = index.get("_class_name")
    if cls is not None and cls not in pipelines:
        raise ModelError(f"--model {model}: a {cls} folder; the {family} guidance loop takes text-to-video "
                         f"{' / '.join(pipelines)} folders")


@contextlib.contextmanager
def load_errors(model: str):
    """Any error inside (diffusers' lazy import turning a broken dependency into a RuntimeError; hub, network and
    format errors, which come in many types) as :func:`~ditflow_fast.errors.cannot_load` naming ``--model``."""
    try:
        yield
    except Exception as exc:
        raise cannot_load(model, exc) from exc


def scheduler_config(scheduler_class, model: str) -> dict | None:
    """The folder's ``scheduler/`` config, or None without one (the family's sampler then takes its defaults)."""
    try:
        return dict(scheduler_class.load_config(model, subfolder="scheduler"))
    except Exception:
        return None


def folder_configs(model: str, default_vae: dict, vae_class: str, presets_of: str) -> tuple[dict, dict]:
    """``(transformer config, VAE config)`` of a local folder, no weights read, without diffusers' private
    ``_`` entries. A VAE that is not a ``vae_class`` (the toy world's codec), or none readable, counts as
    ``default_vae`` (``--dry-run`` says so); no readable ``transformer/config.json`` is a :class:`ModelError` that
    lists the presets (``presets_of``: "Wan presets: ...")."""
    root = Path(model).expanduser()
    try:
        tr = json.loads((root / "transformer" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {model}: no readable transformer/config.json ({exc}); {presets_of}") from exc
    try:
        vae = dict(default_vae) if foreign_vae(model, vae_class) else \
            json.loads((root / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        vae = dict(default_vae)
    return ({k: v for k, v in tr.items() if not k.startswith("_")},
            {k: v for k, v in vae.items() if not k.startswith("_")})
