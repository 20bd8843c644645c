"""What every family's memory model returns for ``--dry-run``: predicted peak bytes by component, next
to the research code's (the families' models: ``families/<name>/memory.py``; derivation: docs/memory.md)."""

from __future__ import annotations

import dataclasses

AMF_BUDGET = 256 << 20  # the torch backend's default score budget


@dataclasses.dataclass
class Estimate:
    components: dict[str, int]
    research_components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def research_total(self) -> int:
        return sum(self.research_components.values())

    def table(self) -> str:
        names = list(dict.fromkeys([*self.components, *self.research_components]))
        rows = [f"{'component':<34}{'ditflow_fast':>14}{'research code':>16}"]
        for n in names:
            a, b = self.components.get(n), self.research_components.get(n)
            rows.append(f"{n:<34}{_gib(a):>14}{_gib(b):>16}")
        rows.append(f"{'predicted peak':<34}{_gib(self.total):>14}{_gib(self.research_total):>16}")
        return "\n".join(rows)


def _gib(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f} GiB"
