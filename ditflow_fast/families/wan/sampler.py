"""Wan's sampler: UniPC on flow sigmas, with its multistep history saved and restored for exact resume."""

from __future__ import annotations

import json

import torch

from ..base import Sampler


def scheduler_state(scheduler) -> dict:
    """UniPC's multistep history: ``{"tensors": {name: tensor}, "meta": json-able dict}``.

    Tensors: ``model_outputs.{i}`` (entries not None), ``last_sample``, ``timestep_list.{i}`` (tensor
    entries). Meta: which entries exist, non-tensor timesteps, ``lower_order_nums``, ``this_order``,
    ``step_index``, ``begin_index``, ``num_inference_steps``. With :meth:`load_scheduler_state` a
    resumed loop continues bit for bit (tested)."""
    tensors, meta = {}, {}
    outs = []
    for i, m in enumerate(scheduler.model_outputs):
        outs.append(m is not None)
        if m is not None:
            tensors[f"model_outputs.{i}"] = m.detach().cpu().contiguous()
    ts = []
    for i, t in enumerate(scheduler.timestep_list):
        if isinstance(t, torch.Tensor):
            tensors[f"timestep_list.{i}"] = t.detach().cpu().contiguous()
            ts.append("tensor")
        else:
            ts.append(None if t is None else (int(t) if float(t).is_integer() else float(t)))
    if scheduler.last_sample is not None:
        tensors["last_sample"] = scheduler.last_sample.detach().cpu().contiguous()
    meta.update(model_outputs=outs, timestep_list=ts, lower_order_nums=int(scheduler.lower_order_nums),
                this_order=getattr(scheduler, "this_order", None), step_index=scheduler.step_index,
                begin_index=scheduler.begin_index, num_inference_steps=scheduler.num_inference_steps,
                has_last_sample=scheduler.last_sample is not None)
    json.dumps(meta)  # must stay json-able (safetensors metadata)
    return {"tensors": tensors, "meta": meta}

def load_scheduler_state(scheduler, state: dict, device=None) -> None:
    """Restore :meth:`scheduler_state` into ``scheduler`` (calls ``set_timesteps`` first when the step
    count differs or was never set). ``device``: where the history tensors go (default: as saved)."""
    tensors, meta = state["tensors"], state["meta"]
    n = meta["num_inference_steps"]
    if n is not None and scheduler.num_inference_steps != n:
        scheduler.set_timesteps(n, device=device)

    def dev(t):
        return t if device is None else t.to(device)

    scheduler.model_outputs = [dev(tensors[f"model_outputs.{i}"]) if present else None
                               for i, present in enumerate(meta["model_outputs"])]
    scheduler.timestep_list = [dev(tensors[f"timestep_list.{i}"]) if t == "tensor" else t
                               for i, t in enumerate(meta["timestep_list"])]
    scheduler.last_sample = dev(tensors["last_sample"]) if meta["has_last_sample"] else None
    scheduler.lower_order_nums = meta["lower_order_nums"]
    if meta["this_order"] is not None:
        scheduler.this_order = meta["this_order"]
    scheduler._step_index = meta["step_index"]
    scheduler._begin_index = meta["begin_index"]


class WanSampler(Sampler):
    """UniPC on flow sigmas; its multistep history lives in the scheduler and travels in the state."""

    def step(self, i, t, pred, latents, generator):
        # UniPC is deterministic: no generator (the per-step seeding is CogVideoX DDIM/DPM's)
        return self.sched.step(pred, torch.as_tensor(t, device=latents.device), latents, return_dict=False)[0]

    def latent_edited(self):
        # UniPC's corrector rebuilds the current sample from the previous one (``last_sample``) and the
        # model outputs, discarding the sample it is handed: after a latent-mode guided step that threw
        # the optimisation away (the AMF loss climbed back at every step, docs/toyworld.md). This step
        # then runs the predictor alone, from the edited latent; the next corrector starts from it.
        self.sched.last_sample = None

    def state(self):
        s = scheduler_state(self.sched)
        return {f"sched.{k}": v for k, v in s["tensors"].items()}, s["meta"]

    def load_state(self, tensors, meta, device):
        if not meta:
            return
        inner = {k[len("sched."):]: v for k, v in tensors.items() if k.startswith("sched.")}
        load_scheduler_state(self.sched, {"tensors": inner, "meta": meta}, device=device)
