"""What every family's memory model returns for ``--dry-run``: predicted peak bytes by component, next
to the research code's (the families' models: ``families/<name>/memory.py``; derivation: docs/memory.md),
and the pieces those models share: their argument checks, exact parameter counts on the meta device, and the
rows every model ends with (the AMF working sets, the optimised tensor with Adam)."""

from __future__ import annotations

import dataclasses
import functools
import json

from ..backends.reference import research_bytes

AMF_BUDGET = 256 << 20  # the torch backend's default score budget
OFFLOAD_MODES = ("none", "model", "group")
GROUP_RESIDENT_BLOCKS = 2  # group offload, one block per group: the running block and one prefetched / in backward


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

    @classmethod
    def build(cls, base: dict, acts: dict, research_acts: dict, shared: dict, *, heads: int, grid: tuple[int, int, int],
              bytes_per_elem: int, opt_elems: int) -> Estimate:
        """The rows in every model's order: weights (``base``), activations (ours, and the research code's, which
        offloads and slices nothing), ``shared`` (captured q/k, ...), the AMF working set over the token ``grid``
        ``(frames, h, w)`` (this package's chunked backend under its score budget, keeping ``F*N`` log-sum-exps;
        the research code's score tensors), and the optimised tensor of ``opt_elems`` in float32 with its gradient
        and Adam's two moments."""
        f, h, w = grid
        n = f * h * w
        opt = {"optimised tensor + Adam (fp32)": 4 * opt_elems * 4}
        return cls({**base, **acts, **shared, "AMF working set": min(AMF_BUDGET, 4 * n * n) + 3 * f * n * 4, **opt},
                   {**base, **research_acts, **shared,
                    "AMF working set": research_bytes(heads, f, h, w, bytes_per_elem), **opt})


QK_ROW = "captured q, k and grads"  # one guidance block's q and k and their gradients: four [N, D] tensors


def add_guidance_blocks(est: Estimate, blocks) -> Estimate:
    """Count every distinct guidance block in ``est`` (built for the deepest one), in place: the loss runs one soft
    AMF per block, and each keeps its block's q and k (before its backward; their gradients after, until the
    backward reaches the block), so every block past the first adds two ``[N, D]`` tensors, half the q/k row."""
    extra = (len(set(blocks)) - 1) * est.components[QK_ROW] // 2
    for col in (est.components, est.research_components):
        col[QK_ROW] += extra
    return est


def blocks_label(blocks) -> str:
    """The dry run's header words for the guidance blocks: ``guidance block 14`` or ``guidance blocks 10, 12``."""
    distinct = sorted(set(int(b) for b in blocks))
    return f"guidance block{'s' if len(distinct) > 1 else ''} {', '.join(map(str, distinct))}"


def config_views(transformer_class: str, vae_class: str, config: dict) -> tuple:
    """Stand-ins for a run's transformer and VAE carrying only ``config`` (a memory model's entry: ``transformer``
    and ``vae`` configs, or a bare transformer config), each over its diffusers class's defaults, so that
    ``--dry-run`` can call the family's own ``geometry``: the size and frame rules, and messages, of the run."""
    import inspect
    import types

    import diffusers
    from diffusers.configuration_utils import FrozenDict

    def view(class_name: str, given: dict | None):
        params = inspect.signature(getattr(diffusers, class_name).__init__).parameters
        full = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        return types.SimpleNamespace(config=FrozenDict({**full, **(given or {})}))

    tr, vae = (config["transformer"], config.get("vae")) if "transformer" in config else (config, None)
    return view(transformer_class, tr), view(vae_class, vae)


def check_options(*, offload: str, opt_mode: str, bytes_per_elem: int, constants: dict,
                  offload_activations: bool = False, checkpointing: bool = True) -> None:
    """The refusals the memory models share (``constants``: a model's measured constants by element size)."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    if opt_mode not in ("latent", "emb"):
        raise ValueError(f"opt_mode must be 'latent' or 'emb', got {opt_mode!r}")
    if bytes_per_elem not in constants:
        raise ValueError(f"bytes_per_elem must be 2 (bf16/fp16) or 4 (fp32), got {bytes_per_elem}")
    if offload_activations and not checkpointing:
        raise ValueError("offload_activations needs checkpointing (the loop refuses the combination)")


def check_block(guidance_block: int, n_blocks: int) -> None:
    if not 0 <= guidance_block < n_blocks:
        raise ValueError(f"guidance block {guidance_block} out of range: the transformer has {n_blocks} blocks")


def config_json(config: dict) -> str:
    """A config as the hashable key of :func:`meta_counts`: sorted JSON, tuples as lists, no private entries."""
    return json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")},
                      sort_keys=True)


@functools.lru_cache(maxsize=32)
def meta_counts(class_name: str, config_json: str, blocks: tuple[str, ...] = ()) -> tuple[int, tuple]:
    """Exact parameters of diffusers' ``class_name(**config)``, built on the meta device (nothing allocated), and
    ``(length, parameters of the first block)`` of each of its block lists named in ``blocks`` (0 for an empty one)."""
    import diffusers
    import torch

    with torch.device("meta"):
        model = getattr(diffusers, class_name)(**json.loads(config_json))

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    lists = [getattr(model, name) for name in blocks]
    return count(model), tuple((len(b), count(b[0]) if len(b) else 0) for b in lists)


def _gib(x) -> str:
    return "-" if x is None else f"{x / 2**30:.2f} GiB"
