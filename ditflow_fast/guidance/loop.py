"""The DiTFlow guided denoising loop on a diffusers CogVideoX transformer and scheduler.

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
4. the state (latent, DPM's previous x0, current embedding) is written atomically, so an
   interrupted run resumes after its last completed step with identical results.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import embeds as emb_io
from . import losses
from .config import GuidanceConfig
from .forward import base_position_table, position_override, rotary_embedding, run_until
from .processor import install

STATE_FILE = "state.safetensors"


@dataclass
class RunResult:
    latents: torch.Tensor | None  # [1, F, C, h, w]; None if stopped early (max_steps)
    losses: dict[int, list[float]] = field(default_factory=dict)  # timestep -> loss per iteration
    resumed_from: int = 0
    saved_embeddings: list[Path] = field(default_factory=list)


class Guide:
    """Holds the model, scheduler, reference and settings of one run; :meth:`run` denoises."""

    def __init__(self, transformer, scheduler, *, ref_latent: torch.Tensor, prompt_embeds: torch.Tensor,
                 negative_embeds: torch.Tensor, config: GuidanceConfig, model_id: str = "",
                 empty_embeds: torch.Tensor | None = None):
        self.tr, self.sched, self.cfg, self.model_id = transformer, scheduler, config, model_id
        self.dtype = config.torch_dtype
        self.device = torch.device(config.device)
        if ref_latent.dim() != 5 or ref_latent.shape[0] != 1:
            raise ValueError(f"ref_latent must be [1, F, C, h, w], got {tuple(ref_latent.shape)}")
        self.ref = ref_latent.to(self.device, self.dtype)
        self.cond = prompt_embeds.to(self.device, self.dtype)
        self.uncond = negative_embeds.to(self.device, self.dtype)
        self.empty = self.uncond if empty_embeds is None else empty_embeds.to(self.device, self.dtype)
        p = transformer.config.patch_size
        _, self.frames, _, lh, lw = ref_latent.shape
        self.latent_hw = (lh, lw)
        self.h, self.w = lh // p, lw // p
        # Only the optimised tensor gets gradients (and fp32 Adam state): the weights stay frozen.
        transformer.requires_grad_(False)
        self.ctrl = install(transformer)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.rope = rotary_embedding(transformer, self.frames, lh, lw, device=self.device)
        self.pos_base = None if self.rope is not None else base_position_table(transformer, self.frames, lh, lw)
        if self.pos_base is not None:
            self.pos_base = self.pos_base.to(self.device)
        self.emb_shape = (2, 2, *self.rope[0].shape) if self.rope is not None else tuple(self.pos_base.shape)
        scheduler.set_timesteps(config.steps, device=self.device)
        self.timesteps = [int(t) for t in scheduler.timesteps]
        self.guided = self.timesteps[:config.guided_steps]
        g = torch.Generator().manual_seed(config.seed)
        self.noise = (torch.randn(self.ref.shape, generator=g) * scheduler.init_noise_sigma).to(self.device, self.dtype)

    # -- forwards ---------------------------------------------------------------------------------
    def _fwd_kwargs(self, x, embeds, t, emb):
        rope = None
        if emb is not None and self.rope is not None:  # [2 (q, k), 2 (cos, sin), N, d]
            rope = tuple((emb[i, 0].to(self.dtype), emb[i, 1].to(self.dtype)) for i in range(2))
        elif self.rope is not None:
            rope = (self.rope[0].to(self.dtype), self.rope[1].to(self.dtype))
        ts = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
        return dict(hidden_states=x.to(self.dtype), encoder_hidden_states=embeds, timestep=ts, image_rotary_emb=rope)

    def _positions(self, emb):
        return position_override(self.tr, emb if self.rope is None else None, self.pos_base)

    def _capture(self, x, embeds, t, emb=None):
        blocks = self.cfg.guidance_blocks
        qk = losses.needs_qk(self.cfg.loss)
        with self._positions(emb):
            ctrl = run_until(self.tr, **self._fwd_kwargs(x, embeds, t, emb), stop_after=max(blocks),
                             qk_blocks=blocks if qk else (), out_blocks=() if qk else blocks)
        got = dict(ctrl.qk if qk else ctrl.out)
        ctrl.clear_captures()
        return got

    @torch.no_grad()
    def reference_targets(self) -> dict[int, dict]:
        """DiTFlow's reference: the clean reference latent at timestep 0 with the empty prompt."""
        caps = self._capture(self.ref, self.empty, 0)
        return {b: losses.reference(self.cfg.loss, c, frames=self.frames, h=self.h, w=self.w,
                                    prop_motion=self.cfg.prop_motion, backend=self.cfg.backend)
                for b, c in caps.items()}

    def _loss(self, x, t, emb, targets):
        caps = self._capture(x, self.cond, t, emb)
        total = sum(losses.loss(self.cfg.loss, caps.pop(b), targets[b], frames=self.frames, h=self.h, w=self.w,
                                temperature=self.cfg.temperature, threshold=self.cfg.threshold,
                                backend=self.cfg.backend) for b in self.cfg.guidance_blocks)
        return total / len(self.cfg.guidance_blocks)  # q/k are now referenced by the graph only

    @torch.no_grad()
    def _copy_reference_kv(self, t):
        noisy = self.sched.add_noise(self.ref, self.noise, torch.tensor([t], device=self.device))
        noisy = self.sched.scale_model_input(noisy, t)
        blocks = self.cfg.injection_blocks
        with self._positions(None):
            ctrl = run_until(self.tr, **self._fwd_kwargs(noisy, self.cond, t, None), stop_after=max(blocks),
                             copy_kv_blocks=blocks)
        kv = dict(ctrl.kv)
        ctrl.clear_captures()
        return kv

    def _optimise(self, param, i, t, targets, bar, latents=None):
        """Adam on ``param``: the latent itself (``latents`` None) or the embedding used with ``latents``."""
        opt = torch.optim.Adam([param], lr=self.cfg.lr_at(i))
        hist = []
        for it in range(self.cfg.opt_iters):
            opt.zero_grad(set_to_none=True)
            loss = self._loss(param, t, None, targets) if latents is None else self._loss(latents, t, param, targets)
            # fp16 models (CogVideoX-2B): scale the loss so small gradients survive the fp16 backward,
            # unscale in fp32, and skip a step whose gradient overflowed (what a GradScaler does).
            scale = 2.0 ** 12 if self.dtype == torch.float16 else 1.0
            (loss * scale).backward()
            if scale != 1.0:
                param.grad.div_(scale)
            if torch.isfinite(param.grad).all():
                opt.step()
            hist.append(float(loss.detach()))
            bar.set_postfix(t=t, it=f"{it + 1}/{self.cfg.opt_iters}", loss=f"{hist[-1]:.4g}")
        return hist

    @torch.no_grad()
    def _denoise(self, i, t, latents, x0_prev, emb):
        x = self.sched.scale_model_input(latents, t)
        use_cfg = t >= self.cfg.cfg_min_t  # outside the interval the unconditional pass is not needed
        with self._positions(emb):
            cond = self.tr(**self._fwd_kwargs(x, self.cond, t, emb), return_dict=False)[0].float()
            uncond = (self.tr(**self._fwd_kwargs(x, self.uncond, t, emb), return_dict=False)[0].float()
                      if use_cfg else None)
        scale = self.cfg.cfg_scale
        if self.cfg.dynamic_cfg:  # the CogVideoX pipeline's schedule, on the timestep value
            n = self.cfg.steps
            scale = 1 + scale * (1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2
        pred = uncond + scale * (cond - uncond) if use_cfg else cond
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1 + i)  # per step: resumable
        tt = torch.tensor(t, device=self.device)
        if self.cfg.scheduler == "dpm":
            back = torch.tensor(self.timesteps[i - 1], device=self.device) if i > 0 else None
            latents, x0_prev = self.sched.step(pred, x0_prev, tt, back, latents.float(), generator=gen,
                                               return_dict=False)
        else:
            latents = self.sched.step(pred, tt, latents.float(), generator=gen, return_dict=False)[0]
        return latents.to(self.dtype), x0_prev

    # -- the run --------------------------------------------------------------------------------
    def run(self, *, state_dir=None, embeds_dir=None, max_steps: int | None = None, progress: bool = True) -> RunResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        start, latents, x0_prev, emb = self._load_state(state_dir)
        res = RunResult(latents=None, resumed_from=start)
        optimise = cfg.guidance and cfg.inject_embeds is None and cfg.guided_steps > 0
        targets = self.reference_targets() if optimise else None
        injected = None
        if cfg.inject_embeds is not None:
            injected = emb_io.load_embeddings(cfg.inject_embeds, timesteps=self.guided, transformer=self.tr,
                                              latent_shape=(self.frames, *self.latent_hw),
                                              expected_shape=self.emb_shape)
        bar = tqdm(total=cfg.steps, initial=start, desc="denoising", disable=not progress, dynamic_ncols=True)
        try:
            for i in range(start, cfg.steps):
                t = self.timesteps[i]
                guided = i < cfg.guided_steps
                self.ctrl.inject_kv = self._copy_reference_kv(t) if guided and cfg.injection else {}
                if not guided:
                    emb = None
                elif injected is not None:
                    emb = injected[t].to(self.device)
                elif optimise and cfg.opt_mode == "latent":
                    param = latents.detach().float().requires_grad_(True)
                    res.losses[t] = self._optimise(param, i, t, targets, bar)
                    latents = param.detach().to(self.dtype)
                elif optimise:
                    start_emb = emb if emb is not None else self._initial_emb()
                    param = start_emb.detach().float().clone().requires_grad_(True)
                    res.losses[t] = self._optimise(param, i, t, targets, bar, latents=latents)
                    emb = param.detach()
                    if embeds_dir is not None:
                        res.saved_embeddings.append(emb_io.save_embedding(
                            embeds_dir, emb, timestep=t, timesteps=self.guided, transformer=self.tr,
                            model_id=self.model_id, latent_shape=(self.frames, *self.latent_hw)))
                latents, x0_prev = self._denoise(i, t, latents, x0_prev, emb)
                self.ctrl.inject_kv = {}
                self._save_state(state_dir, i + 1, latents, x0_prev, emb)
                bar.update(1)
                if max_steps is not None and i + 1 - start >= max_steps and i + 1 < cfg.steps:
                    return res  # interrupted on purpose (tests, budgets): the state is on disk
        finally:
            self.ctrl.inject_kv = {}
            bar.close()
        res.latents = latents
        return res

    def _initial_emb(self) -> torch.Tensor:
        if self.rope is not None:
            one = torch.stack([self.rope[0], self.rope[1]]).float()
            return torch.stack([one, one])  # queries and keys start from the same RoPE, then part
        return self.pos_base.float()

    # -- resumable state ------------------------------------------------------------------------
    def _save_state(self, state_dir, next_step, latents, x0_prev, emb):
        if state_dir is None:
            return
        path = Path(state_dir) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": latents.detach().cpu().contiguous()}
        if x0_prev is not None:
            tensors["x0_prev"] = x0_prev.detach().cpu().contiguous()
        if emb is not None:
            tensors["emb"] = emb.detach().cpu().contiguous()
        tmp = path.with_name(f".{STATE_FILE}.tmp")
        save_file(tensors, str(tmp), metadata={"next_step": str(next_step), "run_key": self.cfg.run_key()})
        os.replace(tmp, path)

    def _load_state(self, state_dir):
        fresh = (0, self.noise.clone(), None, None)
        path = None if state_dir is None else Path(state_dir) / STATE_FILE
        if path is None or not path.exists():
            return fresh
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("run_key") != self.cfg.run_key():
                raise ValueError(f"{path} belongs to a run with other settings; use another --out, "
                                 "or --fresh to start over")
            t = {k: f.get_tensor(k).to(self.device) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        return int(meta["next_step"]), t["latents"].to(self.dtype), t.get("x0_prev"), t.get("emb")
