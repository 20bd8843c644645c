"""Where the components of a guided run live: all on the device, one at a time, or the transformer
group-offloaded block by block -- with diffusers' and accelerate's own hooks, not a hand-written mover.

- ``"none"``: transformer and VAE on the device. A second expert (Wan2.2 A14B's ``transformer_2``)
  stays on the CPU until :func:`expert_swap` brings it: only one expert is ever on the GPU.
- ``"model"``: accelerate's ``CpuOffload`` hook (what diffusers' ``enable_model_cpu_offload`` uses) on
  each component, each offloading the others just before it runs: during the loop only the running
  transformer is on the device; the VAE comes in for ``encode``/``decode`` (diffusers decorates them
  with ``apply_forward_hook``) and sends the transformer(s) out.
- ``"group"``: ``ModelMixin.enable_group_offload(onload_device=device, offload_device="cpu",
  offload_type="block_level", num_blocks_per_group=1)`` on every transformer: a block's weights are on
  the device only while it runs (two with ``use_stream=True``, which prefetches the next block and
  pins the CPU copies); the VAE as in ``"model"``.

Group offloading meets the guidance loop's backward in three places. (1) Without gradient
checkpointing the backward reads weights already sent back to the CPU (autograd keeps the parameter,
whose ``.data`` the offload swaps): ``"group"`` refuses ``checkpointing=False``. With checkpointing
the recomputed block's saved weights are detached aliases of the device copies, alive until that
block's backward is done. (2) The recomputation stops early (``set_checkpoint_early_stop``) and never
reaches a block's post-forward, so every recomputed block would stay on the device (measured on the
CPU: blocks 0..g all left onloaded): onloading a block evicts the blocks two or more away from it
(:func:`_track`), so at most two blocks are resident in the backward too, as the memory model
assumes. (3) A forward stopped by ``StopForward`` never reaches the top-level post-forward (the
non-block parameters stay on the device, as counted) nor the guidance block's: call :func:`settle`
after each backward to send back whatever is left (a no-op without group offloading).

Activations (:func:`activation_offload`, independent of the mode; the transfer command turns it on
with ``"group"``): the tensors a truncated guided forward saves for its backward -- with gradient
checkpointing the input of every checkpointed block, ``[N, D]`` each -- go to host memory
(torch's ``torch.autograd.graph.save_on_cpu``, pinned on CUDA) and come back one block at a time as
the backward recomputes that block. Each tensor object is packed once: the arguments every block
shares (the projected prompt, the timestep projection, TI2V-5B's per-token ``[N, 6, D]`` one) are
one host copy, not one per block. Copies are exact: the gradient is unchanged (tested).
"""

from __future__ import annotations

import contextlib
import weakref

import torch

MODES = ("none", "model", "group")
_CPU_PLACEHOLDER = torch.nn.Linear(1, 1)
_COMPONENTS = ("transformer", "transformer_2", "vae")


def _as_components(module_or_components) -> dict:
    if isinstance(module_or_components, torch.nn.Module):
        return {"transformer": module_or_components}
    comps = {k: v for k, v in dict(module_or_components).items() if k in _COMPONENTS and v is not None}
    if not comps:
        raise ValueError(f"apply_offload: nothing to place (expected a module or a dict with {_COMPONENTS})")
    return comps


def _device_of(module) -> torch.device | None:
    p = next(module.parameters(), None)
    return None if p is None else p.device


def _same(a: torch.device | None, b: torch.device) -> bool:
    if a is None:
        return True
    if a.type != b.type:
        return False
    return b.index is None or a.index == b.index or (a.index in (None, 0) and b.index in (None, 0))


def _install_model_hooks(comps: dict, device: torch.device) -> dict:
    from accelerate.hooks import CpuOffload, UserCpuOffloadHook, add_hook_to_module

    class Others(UserCpuOffloadHook):
        """Stands in for accelerate's ``prev_module_hook`` (``CpuOffload.pre_forward`` offloads it
        before its module runs): every component but ``mine`` that is not on the CPU."""

        def __init__(self, mine, group):
            self.mine, self.group = mine, group

        @property
        def model(self):  # read by CpuOffload.pre_forward: a CPU module means "nothing to offload"
            cpu = torch.device("cpu")
            on = [h.model for h in self.group if h.model is not self.mine and _device_of(h.model) != cpu]
            return on[0] if on else _CPU_PLACEHOLDER

        def offload(self):
            for h in self.group:
                if h.model is not self.mine and _device_of(h.model) != torch.device("cpu"):
                    h.offload()

        def remove(self):
            pass

    group, handles = [], {}
    for name, m in comps.items():
        hook = CpuOffload(execution_device=device)
        add_hook_to_module(m, hook, append=True)  # init_hook puts the module on the CPU
        handle = UserCpuOffloadHook(m, hook)
        hook.prev_module_hook = Others(m, group)
        group.append(handle)
        handles[name] = handle
    return handles


def apply_offload(module_or_components, mode: str, device, *, use_stream: bool = False,
                  checkpointing: bool = True) -> dict:
    """Place a transformer, or ``{"transformer", "transformer_2", "vae"}`` (missing/None entries are
    skipped), for ``mode`` in ``"none" | "model" | "group"`` (module docstring). Returns the accelerate
    ``UserCpuOffloadHook`` handles by component name (``"model"``; the VAE's in ``"group"``), whose
    ``offload()`` sends a component back to the CPU by hand; empty for ``"none"``.

    ``"group"`` needs gradient checkpointing (``checkpointing``: whether the run uses it): without it
    the backward would read the weights a block saved for it after the block sent them back to the
    CPU (autograd keeps the parameter itself, whose ``.data`` the offload swaps); checkpointing
    recomputes each block in the backward and keeps detached aliases of the device copies."""
    if mode not in MODES:
        raise ValueError(f"offload mode must be one of {MODES}, got {mode!r}")
    if mode == "group" and not checkpointing:
        raise ValueError("--offload group needs gradient checkpointing (drop --no-checkpointing): the backward "
                         "of a block reads weights that group offloading has sent back to the CPU")
    device = torch.device(device)
    comps = _as_components(module_or_components)
    if mode == "none":
        for name, m in comps.items():
            m.to("cpu" if name == "transformer_2" else device)
        return {}
    if mode == "model":
        handles = _install_model_hooks(comps, device)
        if "transformer" in comps:
            comps["transformer"].to(device)  # what runs next; the others wait on the CPU
        return handles
    for name in ("transformer", "transformer_2"):
        if name in comps:
            tr = comps[name].to("cpu")
            tr.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                    offload_type="block_level", num_blocks_per_group=1, use_stream=use_stream)
            _track(tr)
    return _install_model_hooks({"vae": comps["vae"]}, device) if "vae" in comps else {}


def _groups(module) -> list:
    """The diffusers ``ModuleGroup`` objects of a group-offloaded module (empty otherwise)."""
    seen, out = set(), []
    for m in module.modules():
        registry = getattr(m, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        group = getattr(hook, "group", None)
        if group is not None and id(group) not in seen:
            seen.add(id(group))
            out.append(group)
    return out


def _track(module) -> None:
    """Bookkeeping on the groups of a group-offloaded transformer: whether each is onloaded
    (``_ditflow_onloaded``, so that :func:`settle` knows what is left on the device whatever the
    devices are, the CPU in tests), and eviction: when block ``j`` onloads, the block groups at
    distance 2 or more from it go back to the CPU. In a forward they already have (each block
    offloads itself after running); in the checkpointed backward, whose early-stopped recomputation
    never offloads, this keeps the block being recomputed and the one just back-propagated (or, with
    streams, the one prefetched), instead of every block down to the guidance block."""
    blocks = {id(b): i for i, b in enumerate(_block_list(module))}
    groups = _groups(module)
    for g in groups:
        if getattr(g, "_ditflow_tracked", False):
            continue
        g._ditflow_index = blocks.get(id(g.modules[0])) if g.modules else None
        g._ditflow_tracked, g._ditflow_onloaded = True, False
        onload, offload = g.onload_, g.offload_

        def onload_(g=g, onload=onload):
            if g._ditflow_index is not None:
                for other in groups:
                    j = other._ditflow_index
                    if other._ditflow_onloaded and j is not None and abs(j - g._ditflow_index) >= 2:
                        other.offload_()
            onload()
            g._ditflow_onloaded = True

        def offload_(g=g, offload=offload):
            offload()
            g._ditflow_onloaded = False

        g.onload_, g.offload_ = onload_, offload_


def _block_list(module) -> list:
    """The transformer's blocks in order: its family's list (HunyuanVideo: dual-stream then single-stream; CogVideoX:
    ``transformer_blocks``), else ``module.blocks``."""
    try:
        from . import family_of

        return list(family_of(module).blocks(module))
    except Exception:  # noqa: BLE001 - a module of no family (tests' stand-ins): its own list, if any
        return list(getattr(module, "blocks", []))


def is_group_offloaded(module) -> bool:
    return bool(_groups(module))


def onloaded_groups(module) -> list:
    """Groups whose tensors are on the onload device although no forward is running (see :func:`settle`)."""
    out = []
    for g in _groups(module):
        if getattr(g, "_ditflow_tracked", False):
            if g._ditflow_onloaded:
                out.append(g)
            continue
        tensors = [p for m in g.modules for p in m.parameters()] + list(g.parameters)
        if tensors and g.onload_device != g.offload_device and _same(tensors[0].device, g.onload_device):
            out.append(g)
    return out


@torch.no_grad()
def settle(module) -> int:
    """Send back to the CPU every group a stopped forward or an early-stopped recomputation left on
    the device (module docstring); returns how many. Call it after each backward (and after a forward
    stopped by ``StopForward`` that is not followed by a backward). A no-op without group offloading."""
    left = onloaded_groups(module)
    for g in left:
        g.offload_()
    return len(left)


def expert_swap(active, inactive, device) -> None:
    """Wan2.2 A14B: the inactive expert goes to the CPU *before* the active one comes to ``device``,
    so only one expert is ever on the GPU; a no-op when they are already so placed, and for
    group-offloaded experts (their blocks come and go by themselves)."""
    device = torch.device(device)
    if inactive is not None and not is_group_offloaded(inactive) and _device_of(inactive) != torch.device("cpu"):
        inactive.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if active is not None and not is_group_offloaded(active) and not _same(_device_of(active), device):
        active.to(device)


class ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """``torch.autograd.graph.save_on_cpu(pin_memory, device_type)``'s own pack and unpack, with each
    tensor object packed once while the context is active (a tensor saved by several nodes, e.g.
    an argument of every checkpointed block, has one host copy; a hit needs the same live object
    at the same version, so a freed tensor whose memory is reused is never mistaken for it).
    ``packed_bytes`` / ``packed_tensors``: what went to the host (tests, logs)."""

    def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
        base = torch.autograd.graph.save_on_cpu(pin_memory=pin_memory, device_type=device_type)
        pack, unpack = base.pack_hook, base.unpack_hook
        cache: dict[int, tuple] = {}
        self._cache = cache
        self.packed_bytes = self.packed_tensors = 0

        def pack_once(t: torch.Tensor):
            hit = cache.get(id(t))
            if hit is not None and hit[0]() is t and hit[1] == t._version:
                return hit[2]
            packed = pack(t)
            try:
                cache[id(t)] = (weakref.ref(t), t._version, packed)
            except TypeError:  # not weak-referenceable: packed every time, as save_on_cpu does
                pass
            self.packed_tensors += 1
            self.packed_bytes += t.numel() * t.element_size()
            return packed

        super().__init__(pack_once, unpack)

    def __enter__(self):
        super().__enter__()
        return self

    def __exit__(self, *exc):
        self._cache.clear()  # the graph holds what it needs; the lookup table is for this forward only
        return super().__exit__(*exc)


def activation_offload(device, enabled: bool = True, *, pin_memory: bool | None = None):
    """The context to run a guided forward in: :class:`ActivationOffload` when ``enabled`` and
    ``device`` is not the CPU (there the saved tensors are on the host already; a no-op context),
    else a null context. ``pin_memory``: default on for CUDA (asynchronous copies)."""
    device = torch.device(device)
    if not enabled or (device.type == "cpu" and not pin_memory):
        return contextlib.nullcontext()
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory)
    return ActivationOffload(pin_memory=pin, device_type=device.type if device.type != "cpu" else "cuda")
