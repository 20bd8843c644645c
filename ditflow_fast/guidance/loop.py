"""The DiTFlow guided denoising loop, family-agnostic: it talks to a model family (``families/``)
and its sampler only (CogVideoX and Wan, one or two experts).

Per denoising step ``i`` with timestep ``t``:
1. guided step (``i < guided_steps``) with injection: run the reference latent, noised to ``t`` with
   the generation's own initial noise, up to the last injection block; keep its video K/V; every
   forward of this step (optimisation and denoising) uses them there;
2. guided step with guidance: 5 Adam iterations on the latent or on the positional embeddings
   (RoPE models: separate query and key RoPE ``[2, 2, N, d]``, (q, k) x (cos, sin), as DiTFlow's code
   does; otherwise the video part of the additive table ``[N, D]``),
   each running the transformer only up to the last guidance block; or, with saved embeddings,
   inject those of timestep ``t`` instead (zero-shot);
3. the denoising step itself: classifier-free guidance (dynamic for RoPE models), scheduler step;
4. the state (latent, the sampler's history: DPM's previous x0 or UniPC's model outputs, the current
   embedding, the losses so far) is written atomically, so an interrupted run resumes after its last
   completed step with identical results.

Non-finite values never become a result: the reference latent and the prompt embeddings are
checked when the run is set up, the latent after every denoising step; a :class:`NonFiniteError`
names the tensor (and the step) before anything of it is saved. A saved state holding any is damaged
(:func:`read_state` refuses it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..atomic import write_safetensors
from ..backends.cpu import release_scratch
from ..families.offload import activation_offload, settle
from . import embeds as emb_io
from . import losses
from .config import GuidanceConfig

STATE_FILE = "state.safetensors"


class NonFiniteError(ValueError):
    """NaN or inf in an input or in the latent during the run."""


class StateError(ValueError):
    """A saved state that is unreadable or belongs to another run."""


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        n = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{name} holds {n} non-finite values (NaN or inf) of {t.numel()}; stopping before "
                             "anything of it is written")


@dataclass
class RunResult:
    # the family's layout ([1, F, C, h, w] CogVideoX, [1, C, F, h, w] Wan); None if stopped early (max_steps)
    latents: torch.Tensor | None
    losses: dict[int, list[float]] = field(default_factory=dict)  # timestep -> loss per iteration
    resumed_from: int = 0
    saved_embeddings: list[Path] = field(default_factory=list)
    passes: int = 0  # guided forward+backward passes of the whole run, resumed steps included (one loss each)


class Guide:
    """Holds the model(s), sampler, reference and settings of one run; :meth:`run` denoises.

    ``transformer_2`` and ``boundary_ratio``: Wan2.2 A14B's low-noise expert and where it takes over
    (``t < boundary_ratio * 1000``). ``family``: found from the transformer's class when not given.
    ``run_key`` / ``key_parts``: what a saved state must match to be resumed (default: the settings'
    hash); the command line adds the inputs (video, prompts, model), so a refusal can name what differs.
    ``image`` / ``ref_image``: :class:`~ditflow_fast.families.base.ImageCondition` of the generation's first frame
    (the user's image) and of the reference's own first frame (image-to-video, docs/i2v.md); the reference's
    inputs go to every pass over the reference, the generation's to every other.
    """

    def __init__(self, transformer, scheduler, *, ref_latent: torch.Tensor, prompt_embeds: torch.Tensor,
                 negative_embeds: torch.Tensor, config: GuidanceConfig, model_id: str = "",
                 empty_embeds: torch.Tensor | None = None, family=None, transformer_2=None,
                 boundary_ratio: float | None = None, run_key: str | None = None,
                 key_parts: dict | None = None, ref_cache=None, image=None, ref_image=None):
        from ..families import family_of

        self.family = family or family_of(transformer)
        self.tr, self.cfg, self.model_id = transformer, config, model_id
        self.experts = {"transformer": transformer}
        if transformer_2 is not None:
            self.experts["transformer_2"] = transformer_2
        self.boundary_ratio = boundary_ratio if transformer_2 is not None else None
        self.dtype = config.torch_dtype
        # between steps: the model's dtype only where the family's pipeline rounds to it (CogVideoX)
        self.latent_dtype = self.dtype if getattr(self.family, "latents_in_model_dtype", False) else torch.float32
        self.device = torch.device(config.device)
        self.run_key = run_key or config.run_key()
        self.key_parts = key_parts or {"settings": config.run_key()}
        if ref_latent.dim() != 5 or ref_latent.shape[0] != 1:
            raise ValueError(f"ref_latent must be [1, ...] with 5 dimensions, got {tuple(ref_latent.shape)}")
        check_finite("the reference latent", ref_latent)
        for name, t in (("prompt", prompt_embeds), ("negative", negative_embeds), ("empty", empty_embeds)):
            if t is not None:
                check_finite(f"prompt embedding {name!r}", t)
        self.ref = ref_latent.to(self.device, self.dtype)
        self.cond = prompt_embeds.to(self.device, self.dtype)
        self.uncond = negative_embeds.to(self.device, self.dtype)
        self.empty = self.uncond if empty_embeds is None else empty_embeds.to(self.device, self.dtype)
        self.frames, self.h, self.w = self.family.token_grid(transformer, ref_latent)
        s = ref_latent.shape
        self.latent_fhw = (s[1], s[3], s[4]) if self.family.latent_layout == "BFCHW" else (s[2], s[3], s[4])
        self.latent_hw = self.latent_fhw[1:]
        self.ctrl = None
        self.forward_inputs = {}
        for tr in self.experts.values():
            # Only the optimised tensor gets gradients (and fp32 Adam state): the weights stay frozen.
            tr.requires_grad_(False)
            self.ctrl = self.family.install(tr, self.ctrl)  # one controller shared by the experts
            self.forward_inputs = self.family.prepare(tr, config)
            if config.gradient_checkpointing:
                tr.enable_gradient_checkpointing()
        if config.gradient_checkpointing:  # the recomputed per-token work in token slices, where the family has it
            for tr in self.experts.values():
                self.family.chunk_ffn(tr, config.ffn_chunks, self.frames * self.h * self.w)
        self.emb_shape = tuple(self.family.initial_emb(transformer, self.ref).shape)
        self.sampler = self.family.make_sampler(scheduler, config)
        self.sched = self.sampler.sched
        self.timestep_values = self.sampler.set_timesteps(config.steps, device=self.device)
        self.timesteps = [int(t) for t in self.timestep_values]  # keys of losses, embeddings, the guided steps
        # what the model is given: the scheduler's own value where it is fractional (flow-matching Euler)
        self._exact_t = {k: float(v) for k, v in zip(self.timesteps, self.timestep_values, strict=True)
                         if float(v) != k}
        if len(set(self.timesteps)) < len(self.timesteps):
            raise ValueError(f"--steps {config.steps}: two of the sampler's timesteps share an integer part, which "
                             "keys the run's losses and embeddings; use fewer steps")
        self.guided = self.timesteps[:config.guided_steps]
        g = torch.Generator().manual_seed(config.seed)
        self.noise = (torch.randn(self.ref.shape, generator=g) * self.sampler.init_noise_sigma).to(self.device,
                                                                                                   self.latent_dtype)
        self.gen_kw, self.anchor = self._image_inputs(image)
        self.ref_kw, _ = self._image_inputs(ref_image)  # the reference is its own first frame: never anchored
        self._targets: dict[str, dict] = {}
        self.ref_cache = ref_cache  # a guidance.ref_cache.RefCache: targets shared by runs on one reference
        self._injected: dict[int, torch.Tensor] | None = None

    def injected_embeddings(self) -> dict[int, torch.Tensor] | None:
        """``config.inject_embeds`` loaded and checked against this model (once), or None without it: a caller
        may load them before it changes anything on disk, so that a refused folder costs nothing."""
        if self.cfg.inject_embeds is not None and self._injected is None:
            self._injected = emb_io.load_embeddings(self.cfg.inject_embeds, timesteps=self.guided, transformer=self.tr,
                                                    latent_shape=self.latent_fhw, expected_shape=self.emb_shape)
        return self._injected

    # -- image-to-video ---------------------------------------------------------------------------
    def _image_inputs(self, cond):
        if cond is None:
            return {}, None
        kw = cond.forward_kw_on(self.device, self.dtype)
        for k, v in kw.items():
            if torch.is_tensor(v) and v.is_floating_point():
                check_finite(f"the image input {k!r}", v)
        if cond.anchor is None:
            return kw, None
        axis = 1 if self.family.latent_layout == "BFCHW" else 2
        a = cond.anchor.to(self.device, torch.float32)
        check_finite("the image's latent", a)
        others = [d for d in range(5) if d != axis]
        if a.dim() != 5 or a.shape[axis] > self.ref.shape[axis] or [a.shape[d] for d in others] != \
                [self.ref.shape[d] for d in others]:
            raise ValueError(f"the image's latent {tuple(a.shape)} does not fit the video's {tuple(self.ref.shape)}")
        return kw, (a, cond.anchor_noised, axis)

    def _hold(self, latents, t):
        """``latents`` with its first frames the image's latent: noised to timestep ``t``'s level (text-to-video
        anchoring), or clean (``t`` None: the result; and always for a clean-first model). Differentiable in the
        other frames only."""
        if self.anchor is None:
            return latents
        a, noised, axis = self.anchor
        k = a.shape[axis]
        if noised and t is not None:
            a = self.sampler.add_noise(a, self.noise.narrow(axis, 0, k).float(), self._model_t(t))
        rest = latents.narrow(axis, k, latents.shape[axis] - k)
        return torch.cat([a.to(latents.dtype), rest], dim=axis)

    # -- experts ----------------------------------------------------------------------------------
    def _expert_name(self, t) -> str:
        if len(self.experts) == 1:
            return "transformer"
        n_train = int(getattr(self.sched.config, "num_train_timesteps", 1000))
        return self.family.expert_for(t, self.boundary_ratio, n_train)

    def _expert(self, t):
        """The transformer for timestep ``t``; on an accelerator only that expert is kept there."""
        return self._placed(self._expert_name(t))

    def _placed(self, name: str):
        """The expert ``name``, the one kept on an accelerator from now on."""
        tr = self.experts[name]
        if len(self.experts) > 1 and self.device.type != "cpu":
            from ..families.offload import expert_swap

            for other_name, other in self.experts.items():
                if other_name != name:
                    expert_swap(tr, other, self.device)
        return tr

    # -- forwards ---------------------------------------------------------------------------------
    def _model_t(self, t):
        """The timestep value the model and the sampler see for the integer key ``t``."""
        return self._exact_t.get(t, t)

    def _capture(self, tr, x, embeds, t, emb=None, kw=None):
        blocks = self.cfg.guidance_blocks
        qk = losses.needs_qk(self.cfg.loss)
        ctrl = self.family.run_until(tr, x.to(self.dtype), embeds, self._model_t(t), emb, stop_after=max(blocks),
                                     qk_blocks=blocks if qk else (), out_blocks=() if qk else blocks,
                                     qk_rope=self.cfg.amf_rope,
                                     **(self.gen_kw if kw is None else kw))
        got = dict(ctrl.qk if qk else ctrl.out)
        ctrl.clear_captures()
        return got

    @torch.no_grad()
    def reference_targets(self, expert: str = "transformer") -> dict[int, dict]:
        """DiTFlow's reference: the clean reference latent at timestep 0 with the empty prompt, through
        the expert that guides (so its AMF is compared with the same model's)."""
        if expert not in self._targets:
            def compute():
                # the second expert's reference is taken mid-run, while the step's K/V injection is armed:
                # the reference is the model's own attention, so nothing is injected into it
                with self.ctrl.no_injection():
                    caps = self._capture(self._placed(expert), self.ref, self.empty, 0, kw=self.ref_kw)
                return {b: losses.reference(self.cfg.loss, c, frames=self.frames, h=self.h, w=self.w,
                                            prop_motion=self.cfg.prop_motion, backend=self.cfg.backend)
                        for b, c in caps.items()}
            cache = self.ref_cache
            self._targets[expert] = cache.targets_for(self, expert, compute) if cache is not None else compute()
        return self._targets[expert]

    def _loss(self, x, t, emb, targets, tr=None):
        # --offload-activations: what the truncated forward saves for the backward waits in host memory
        with activation_offload(self.device, getattr(self.cfg, "offload_activations", False)):
            caps = self._capture(tr if tr is not None else self._expert(t), x, self.cond, t, emb)
        total = sum(losses.loss(self.cfg.loss, caps.pop(b), targets[b], frames=self.frames, h=self.h, w=self.w,
                                temperature=self.cfg.temperature, threshold=self.cfg.threshold,
                                backend=self.cfg.backend, **losses.options(self.cfg))
                    for b in self.cfg.guidance_blocks)
        return total / len(self.cfg.guidance_blocks)  # q/k are now referenced by the graph only

    @torch.no_grad()
    def _copy_reference_kv(self, tr, t):
        t = self._model_t(t)
        noisy = self.sampler.add_noise(self.ref, self.noise, t)
        noisy = self.sampler.scale_model_input(noisy, t)
        blocks = self.cfg.injection_blocks
        ctrl = self.family.run_until(tr, noisy.to(self.dtype), self.cond, t, None, stop_after=max(blocks),
                                     copy_kv_blocks=blocks, **self.ref_kw)
        kv = dict(ctrl.kv)
        ctrl.clear_captures()
        return kv

    def _optimise(self, tr, param, i, t, targets, bar, latents=None):
        """Adam on ``param``: the latent itself (``latents`` None) or the embedding used with ``latents``.

        Returns the loss of every real forward+backward pass. With ``grad_reuse`` k > 1 only every k-th
        iteration runs one; the Adam steps in between reuse its gradient (no forward, so no loss). With
        ``early_stop`` the step's iterations end once a pass's loss falls by less than that fraction of
        the previous pass's (its own Adam step is still taken: its gradient is already paid for)."""
        cfg = self.cfg
        opt = torch.optim.Adam([param], lr=cfg.lr_at(i))
        hist, grad = [], None
        reuse, tol = int(getattr(cfg, "grad_reuse", 1)), float(getattr(cfg, "early_stop", 0.0))
        for it in range(cfg.opt_iters):
            if it % reuse == 0 or grad is None:
                opt.zero_grad(set_to_none=True)
                loss = (self._loss(self._hold(param, t), t, None, targets, tr) if latents is None
                        else self._loss(latents, t, param, targets, tr))
                # fp16 models (CogVideoX-2B): scale the loss so small gradients survive the fp16 backward,
                # unscale in fp32, and skip a step whose gradient overflowed (what a GradScaler does).
                scale = 2.0 ** 12 if self.dtype == torch.float16 else 1.0
                (loss * scale).backward()
                settle(tr)  # group offloading: send back the blocks the stopped forward left on the device
                if scale != 1.0:
                    param.grad.div_(scale)
                grad = param.grad.detach().clone() if reuse > 1 else None
                hist.append(float(loss.detach()))
                stop = tol > 0 and len(hist) > 1 and hist[-2] - hist[-1] < tol * abs(hist[-2])
            else:
                param.grad = grad.clone()
                stop = False
            if torch.isfinite(param.grad).all():
                opt.step()
            bar.set_postfix(t=t, it=f"{it + 1}/{cfg.opt_iters}", loss=f"{hist[-1]:.4g}")
            if stop:
                break
        return hist

    @torch.no_grad()
    def _denoise(self, i, t, latents, emb):
        tr = self._expert(t)
        x = self.sampler.scale_model_input(latents, self._model_t(t)).to(self.dtype)
        # outside the interval, or for a guidance-distilled family, the unconditional pass is not needed
        use_cfg = t >= self.cfg.cfg_min_t and self.family.needs_uncond(self.cfg)
        kw = self.gen_kw
        cond = self.family.forward(tr, x, self.cond, self._model_t(t), emb, **kw).float()
        uncond = self.family.forward(tr, x, self.uncond, self._model_t(t), emb, **kw).float() if use_cfg else None
        scale = self.cfg.cfg_scale
        if self.cfg.cfg_scale_2 is not None and self._expert_name(t) == "transformer_2":
            scale = self.cfg.cfg_scale_2
        pred = self.family.guide_cfg(cond, uncond, scale, t, self.cfg) if use_cfg else cond
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1 + i)  # per step: resumable
        latents = self.sampler.step(i, self.timestep_values[i], pred, latents.float(), gen)
        return latents.to(self.latent_dtype)

    # -- the run --------------------------------------------------------------------------------
    def run(self, *, state_dir=None, embeds_dir=None, max_steps: int | None = None, progress: bool = True,
            on_step=None) -> RunResult:
        """Denoise, guided in the first steps. ``on_step(step, total, loss)`` after each finished step (``loss``:
        the step's last AMF loss, None for an unguided step); ``progress``: tqdm's bar on stderr."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        start, latents, emb, done_losses = self._load_state(state_dir)
        res = RunResult(latents=None, resumed_from=start, losses=done_losses)
        optimise = cfg.guidance and cfg.inject_embeds is None and cfg.guided_steps > 0
        if optimise and start < cfg.guided_steps:
            self.reference_targets(self._expert_name(self.timesteps[start]))
        injected = self.injected_embeddings()
        bar = tqdm(total=cfg.steps, initial=start, desc="denoising", disable=not progress, dynamic_ncols=True)
        try:
            for i in range(start, cfg.steps):
                t = self.timesteps[i]
                guided = i < cfg.guided_steps
                tr = self._expert(t)
                latents = self._hold(latents, t)
                self.ctrl.inject_kv = self._copy_reference_kv(tr, t) if guided and cfg.injection else {}
                if not guided:
                    emb = None
                elif injected is not None:
                    emb = injected[t].to(self.device)
                elif optimise and cfg.opt_mode == "latent":
                    targets = self.reference_targets(self._expert_name(t))
                    param = latents.detach().float().requires_grad_(True)
                    res.losses[t] = self._optimise(tr, param, i, t, targets, bar)
                    latents = self._hold(param.detach(), t)  # float32 into the step: Adam's update kept whole
                    self.sampler.latent_edited()
                elif optimise:
                    targets = self.reference_targets(self._expert_name(t))
                    start_emb = emb if emb is not None else self.family.initial_emb(tr, self.ref).float()
                    param = start_emb.detach().float().clone().requires_grad_(True)
                    res.losses[t] = self._optimise(tr, param, i, t, targets, bar, latents=latents)
                    emb = param.detach()
                    if embeds_dir is not None:
                        res.saved_embeddings.append(emb_io.save_embedding(
                            embeds_dir, emb, timestep=t, timesteps=self.guided, transformer=self.tr,
                            model_id=self.model_id, latent_shape=self.latent_fhw, run_key=self.run_key))
                latents = self._denoise(i, t, latents, emb)
                self.ctrl.inject_kv = {}
                if i + 1 == cfg.guided_steps:
                    release_scratch()  # the cpu backend's kept buffers: no AMF runs after the guided steps
                check_finite(f"the latent after denoising step {i + 1} of {cfg.steps} (timestep {t})", latents)
                self._save_state(state_dir, i + 1, latents, emb, res.losses)
                bar.update(1)
                if on_step is not None:
                    on_step(i + 1, cfg.steps, res.losses[t][-1] if res.losses.get(t) else None)
                if max_steps is not None and i + 1 - start >= max_steps and i + 1 < cfg.steps:
                    res.passes = sum(len(h) for h in res.losses.values())
                    return res  # interrupted on purpose (tests, budgets): the state is on disk
        finally:
            self.ctrl.inject_kv = {}
            release_scratch()
            bar.close()
        res.latents = self._hold(latents, None)
        res.passes = sum(len(h) for h in res.losses.values())  # every real pass recorded one loss
        return res

    # -- resumable state ------------------------------------------------------------------------
    def _save_state(self, state_dir, next_step, latents, emb, losses_so_far):
        if state_dir is None:
            return
        path = Path(state_dir) / STATE_FILE
        tensors = {"latents": latents.detach().cpu().contiguous()}
        sampler_tensors, sampler_meta = self.sampler.state()
        tensors.update(sampler_tensors)
        if emb is not None:
            tensors["emb"] = emb.detach().cpu().contiguous()
        meta = {"next_step": str(next_step), "run_key": self.run_key, "key_parts": json.dumps(self.key_parts),
                "losses": json.dumps({str(k): v for k, v in losses_so_far.items()})}
        if sampler_meta:
            meta["sampler"] = json.dumps(sampler_meta)
        write_safetensors(path, tensors, meta)

    def _load_state(self, state_dir):
        fresh = (0, self.noise.clone(), None, {})
        path = None if state_dir is None else Path(state_dir) / STATE_FILE
        if path is None or not path.exists():
            return fresh
        meta, t = read_state(path)
        if meta.get("run_key") != self.run_key:
            raise StateError(f"{path} belongs to a run with other {differing(meta, self.key_parts)}; "
                             "use another --out, or --fresh to start over")
        t = {k: v.to(self.device) for k, v in t.items()}
        self.sampler.load_state(t, json.loads(meta.get("sampler", "{}")), self.device)
        losses_done = {int(k): v for k, v in json.loads(meta.get("losses", "{}")).items()}
        return int(meta["next_step"]), t["latents"].to(self.latent_dtype), t.get("emb"), losses_done


def read_state(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a saved state; :class:`StateError` (saying to use ``--fresh``) if unreadable
    or holding NaN or inf (the loop never saves those, so the file was damaged)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        int(meta["next_step"])
        if "latents" not in tensors:
            raise KeyError("latents")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise StateError(f"{path}: unreadable or damaged saved state ({type(exc).__name__}: {exc}); "
                         "use --fresh to start over") from exc
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise StateError(f"{path}: damaged saved state: tensor {k!r} holds {int((~torch.isfinite(v)).sum())} "
                             "non-finite values (NaN or inf); use --fresh to start over")
    return meta, tensors


def differing(meta: dict, key_parts: dict) -> str:
    """Which of the run key's parts differ between a saved state and this run, in words."""
    try:
        saved = json.loads(meta.get("key_parts", "{}"))
    except ValueError:
        saved = {}
    diff = [k for k in key_parts if saved.get(k) != key_parts[k]]
    return ", ".join(diff) if diff and saved else "settings"
