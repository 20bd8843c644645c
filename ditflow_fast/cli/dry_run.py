"""``transfer --dry-run``: the predicted peak GPU memory of a run, from the model's configs (no weights)."""

from __future__ import annotations


def dry_run(model: str, cfg, offload: str) -> int:
    from ..families import detect, preset_family

    fam = preset_family(model) or detect(model)
    print(fam.dry_run_table(model, cfg, offload))
    return 0
