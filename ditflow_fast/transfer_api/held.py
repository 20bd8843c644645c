"""A model held for repeated transfers: loaded once (or handed over as a diffusers pipeline), reset between runs."""

from __future__ import annotations

import hashlib


class HeldModel:
    """The components one transfer needs, kept between transfers.

    ``HeldModel("THUDM/CogVideoX-5b")`` loads a hub id or local folder the way ``transfer`` loads it, on
    first use, in the run's dtype (a later run in another dtype reloads). ``HeldModel.from_pipeline(pipe)``
    takes a loaded diffusers pipeline of a supported family as its caller set it up: components, dtype,
    placement, offload hooks and LoRA are left as they are.
    """

    def __init__(self, model: str):
        from ..families import detect, resolve_model_ref

        self.name = str(model)
        self.family = detect(self.name)  # milliseconds for a mistyped path: nothing path-like goes to the hub
        self.ref, self.local = resolve_model_ref(self.name)
        self.pipeline = None
        self.components: dict | None = None
        self._dtype = None
        self.loads = 0

    @classmethod
    def from_pipeline(cls, pipe) -> HeldModel:
        from ..families import family_of

        for name in ("transformer", "vae", "scheduler"):
            if getattr(pipe, name, None) is None:
                raise ValueError(f"model: a pipeline without a {name}; pass a diffusers video pipeline of a "
                                 "supported family (CogVideoXPipeline, WanPipeline) or a model id")
        self = cls.__new__(cls)
        self.family = family_of(pipe.transformer)
        self.name = str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or type(pipe).__name__)
        self.ref, self.local, self.pipeline, self.loads = self.name, False, pipe, 0
        index = dict(pipe.config)
        self.components = {
            "transformer": pipe.transformer, "transformer_2": getattr(pipe, "transformer_2", None), "vae": pipe.vae,
            "scheduler_config": dict(pipe.scheduler.config), "boundary_ratio": index.get("boundary_ratio"),
            "expand_timesteps": bool(index.get("expand_timesteps", False))}
        for name in ("image_encoder", "image_processor"):  # Wan2.1-I2V's CLIP, for its image inputs
            if getattr(pipe, name, None) is not None:
                self.components[name] = getattr(pipe, name)
        self._dtype = pipe.transformer.dtype
        self._as_found = _settings(self.components)
        return self

    @property
    def configs(self) -> tuple[dict, dict]:
        """The transformer's and the VAE's configs (no weights read for a model not yet loaded)."""
        if self.components is not None:
            tcfg, vcfg = _clean(self.components["transformer"].config), _clean(self.components["vae"].config)
            if self.components.get("transformer_2") is not None:  # as below, once loaded or handed over
                tcfg["experts"] = 2
            return tcfg, vcfg
        from .checks import has_second_expert, model_configs

        tcfg, vcfg = model_configs(self.family, self.ref)
        if has_second_expert(self.family, self.ref):  # Wan2.2 A14B: its defaults differ from 14B's
            tcfg = {**tcfg, "experts": 2}
        return tcfg, vcfg

    @property
    def dtype(self):
        return self._dtype

    def digest(self) -> str:
        """The model part of a run key: the folder's fingerprint, or for a pipeline its name, configs and a
        sample of every parameter (the first and last values of each: a fused LoRA changes them; added
        adapter weights add names)."""
        if self.pipeline is None:
            from ..guidance.run_key import model_digest

            return model_digest(self.ref, self.local)
        h = hashlib.sha256(self.name.encode())
        for key in ("transformer", "transformer_2", "vae"):
            mod = self.components[key]
            if mod is None:
                continue
            h.update(repr(sorted(_clean(mod.config).items())).encode())
            for n, p in mod.named_parameters():
                flat = p.detach().reshape(-1)
                h.update(f"{n}{tuple(p.shape)}{p.dtype}".encode())
                h.update(flat[:8].float().cpu().numpy().tobytes() + flat[-8:].float().cpu().numpy().tobytes())
        return "pipeline:" + h.hexdigest()[:16]

    def load(self, dtype) -> dict:
        """The components in ``dtype`` (a pipeline's as they are), reset from any earlier run."""
        if self.pipeline is not None:
            self.reset()
            return self.components
        if self.components is not None and self._dtype == dtype:
            self.reset()
            return self.components
        self.components = None  # a dtype change: the old copy goes before the new one comes
        self.components = self.family.load(self.ref, dtype)
        self._dtype, self.loads = dtype, self.loads + 1
        return self.components

    def reset(self) -> None:
        """Undo what a run leaves on the components: the guidance processors and hooks, the guided backward's
        FFN slices, gradient checkpointing, VAE tiling and slicing."""
        if self.components is None:
            return
        for name in ("transformer", "transformer_2"):
            tr = self.components.get(name)
            if tr is None:
                continue
            self.family.uninstall(tr)
            self.family.unchunk_ffn(tr)
            if getattr(tr, "is_gradient_checkpointing", False):
                tr.disable_gradient_checkpointing()
            tr.requires_grad_(False)
        vae = self.components.get("vae")
        for off in ("disable_tiling", "disable_slicing"):
            if vae is not None and hasattr(vae, off):
                getattr(vae, off)()

    def restore(self) -> None:
        """A caller's pipeline as it was handed over: no guidance processors, and its own gradient checkpointing,
        trainable flags and VAE tiling and slicing."""
        if self.pipeline is None:
            return
        self.reset()
        for name, (checkpointing, trainable) in self._as_found["modules"].items():
            mod = self.components[name]
            mod.requires_grad_(trainable)
            if checkpointing:
                mod.enable_gradient_checkpointing()
        vae = self.components["vae"]
        for flag, on in self._as_found["vae"].items():
            if on:
                getattr(vae, f"enable_{flag}")()

    def release(self) -> None:
        """Drop the loaded weights (a pipeline stays its caller's)."""
        if self.pipeline is None:
            self.components = None


def _clean(cfg) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def _settings(comps: dict) -> dict:
    """What a run changes on a caller's components, to put back afterwards."""
    modules = {name: (bool(getattr(comps[name], "is_gradient_checkpointing", False)),
                      any(p.requires_grad for p in comps[name].parameters()))
               for name in ("transformer", "transformer_2") if comps.get(name) is not None}
    vae = {flag: bool(getattr(comps["vae"], f"use_{flag}", False)) for flag in ("tiling", "slicing")
           if hasattr(comps["vae"], f"enable_{flag}")}
    return {"modules": modules, "vae": vae}
