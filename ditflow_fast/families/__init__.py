"""Model families behind one seam: the guidance loop talks only to a family and its sampler.

One sub-package per family (the contract is :mod:`.base`); a family is found by the transformer's
class or the folder's ``model_index.json``. Supported: the families registered below, in :data:`FAMILIES`
(in the order errors list them, by their ``label``: :func:`supported`). ``docs/families.md`` lists their
models and says how to add the next one.

- :mod:`.base`: the contract (``Family``, checked by :func:`register`), ``FamilyBase`` (the optional
  hooks' defaults), ``Sampler``, ``ModelError``; :mod:`.estimate`: what the memory models return;
- one sub-package per family, of the same shape (``family.py`` the seam, ``memory.py`` the ``--dry-run``
  model, ``tiny.py`` tiny random models, and their own helpers);
- what several families share: :mod:`.folders` (reading pipeline folders), :mod:`.guided_attention` (the
  processors' controller step), :mod:`.rope` (emb mode's separate q/k RoPE), :mod:`.text_encoders`;
- :mod:`.offload`: model, group and activation offloading; :mod:`.prompts`: prompt embeddings for any family.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import Family, FamilyBase, ModelError, missing_members
from .cogvideox import CogVideoXFamily
from .hunyuan import HunyuanVideoFamily
from .ltx import LTXFamily
from .wan import WanFamily

FAMILIES: dict[str, Family] = {}


def register(family) -> None:
    """Add ``family`` to :data:`FAMILIES`; a ``TypeError`` names every member of the contract
    (:class:`~.base.Family`) it lacks, so a half-written family fails where it is registered, not mid-run."""
    missing = missing_members(family)
    if missing:
        hint = "" if isinstance(family, type) and issubclass(family, FamilyBase) else \
            " (subclass families.base.FamilyBase for the optional hooks' defaults)"
        raise TypeError(f"family {getattr(family, 'name', family)!r} lacks {', '.join(missing)}{hint}")
    FAMILIES[family.name] = family


# one line per family, in the order errors list them
register(CogVideoXFamily)
register(WanFamily)
register(LTXFamily)
register(HunyuanVideoFamily)


def supported() -> str:
    """The registered families as errors list them (their ``label``, in registration order)."""
    return ", ".join(f.label for f in FAMILIES.values())


def family_of(transformer):
    """The family of a loaded transformer, by its class."""
    name = type(transformer).__name__
    for fam in FAMILIES.values():
        if fam.matches(None, name):
            return fam
    raise ModelError(f"a {name} transformer is not of a supported family: {supported()}")


def preset_family(model: str):
    """The family whose built-in configs (the dry run's, no download) name ``model``; None otherwise."""
    return next((fam for fam in FAMILIES.values() if model in fam.PRESETS), None)


def looks_local(model: str) -> bool:
    """A path the user means on this machine: never sent to the hub."""
    if model.startswith((".", "/", "~")) or os.sep in model and Path(model.split(os.sep)[0]).exists():
        return True
    return Path(model).expanduser().exists() or model.count("/") != 1


def resolve_model_ref(model: str) -> tuple[str, bool]:
    """``(reference, is_local)``: a local folder, or a hub id that may be fetched. Fails in
    milliseconds for a mistyped path (nothing local-looking is sent to the hub) and honours
    ``HF_HUB_OFFLINE=1``: a hub id then needs the local cache."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"--model {model}: a file, not a diffusers model folder")
        return str(local), True
    if looks_local(model):
        raise ModelError(f"--model {model}: no such folder (and a path, so not looked up on the hub)")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - an odd cache is the same as none
        cached = False
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        if not cached:
            raise ModelError(f"--model {model}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 "
                             "forbids downloading it; unset HF_HUB_OFFLINE or give a local folder")
    elif not cached:
        _probe_hub(model)
    return model, False


def _probe_hub(model: str, timeout: float = 3.0) -> None:
    """One connection attempt to the hub, so that an unreachable hub fails in seconds, not after the
    download client's retries (about 25 s)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as exc:
        raise ModelError(f"--model {model}: no such local folder, and the hub ({url.hostname}) cannot be reached "
                         f"to fetch it as a hub id ({exc}); check the path, or the network") from None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def detect(model: str):
    """The family of a model folder or hub id (from ``model_index.json`` and the transformer's
    config), or :class:`ModelError` listing the supported families."""
    ref, local = resolve_model_ref(model)
    if local:
        index = _read_json(Path(ref) / "model_index.json")
        tcfg = _read_json(Path(ref) / "transformer" / "config.json")
    else:
        try:
            from huggingface_hub import hf_hub_download

            index = _read_json(Path(hf_hub_download(ref, "model_index.json")))
            tcfg = None
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            raise ModelError(f"--model {model}: cannot read its model_index.json from the hub "
                             f"({type(exc).__name__}: {exc})") from exc
    cls = (tcfg or {}).get("_class_name")
    for fam in FAMILIES.values():
        if fam.matches(index, cls):
            return fam
    if local and index is None and tcfg is None:
        if (Path(ref) / "transformer").is_dir():
            raise ModelError(f"--model {model}: cannot be loaded (transformer/config.json missing or unreadable)")
        raise ModelError(f"--model {model}: not a diffusers folder of a supported family (no model_index.json, "
                         f"no transformer/); supported: {supported()}")
    what = (index or {}).get("_class_name") or cls or "unknown model"
    raise ModelError(f"--model {model}: a {what}, not of a supported family; supported: {supported()}")


__all__ = ["FAMILIES", "CogVideoXFamily", "Family", "FamilyBase", "HunyuanVideoFamily", "LTXFamily",
           "WanFamily", "detect", "family_of", "preset_family", "register", "resolve_model_ref", "supported"]
