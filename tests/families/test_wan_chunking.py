"""Token-chunked Wan FFN (ditflow_fast.families.wan.chunking) and activation offload
(ditflow_fast.families.offload.activation_offload, torch's save_on_cpu): outputs and gradients exactly
as without them, on tiny Wan and CogVideoX transformers, through diffusers' non-reentrant
checkpointing and the StopForward early stop; the options' plumbing (config, run key, CLI)."""

from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast.families import offload  # noqa: E402
from ditflow_fast.families.wan import chunking as wan_chunking  # noqa: E402
from ditflow_fast.families.wan import tiny as wan_tiny  # noqa: E402
from ditflow_fast.families.wan.family import WanFamily  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _host_copies():
    """The offload context the loop uses, made to really copy on the CPU: save_on_cpu with
    pin_memory=True packs into a fresh tensor (no CUDA: unpinned), so the backward reads the copies."""
    return offload.activation_offload("cpu", True, pin_memory=True)


def _wan(dtype=torch.float32, layers=4, chunks=1, checkpointing=True, scope="tail", expand=False):
    tr = wan_tiny.tiny_transformer(layers=layers).to(dtype).requires_grad_(False)
    tr._ditflow_expand_timesteps = expand  # TI2V's per-token timesteps: [B, N, 6, D] modulations
    if checkpointing:
        tr.enable_gradient_checkpointing()
    WanFamily.install(tr)
    wan_chunking.install(tr, chunks, scope)
    return tr


def _wan_inputs(dtype, emb_tr=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10, generator=g).requires_grad_(True)
    e = torch.randn(1, wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM, generator=g).to(dtype)
    emb = WanFamily.initial_emb(emb_tr, x).requires_grad_(True) if emb_tr is not None else None
    return x, e, emb


def _wan_step(tr, dtype, ctx=None, block=2, emb=False):
    """Truncated forward to ``block`` with q/k captured, a nonlinear loss, backward: (loss, grads, ctx)."""
    import contextlib

    x, e, em = _wan_inputs(dtype, tr if emb else None)
    ctx = ctx if ctx is not None else contextlib.nullcontext()
    with ctx:
        ctrl = WanFamily.run_until(tr, x.to(dtype), e, 500, em, stop_after=block, qk_blocks=[block])
    q, k = ctrl.qk.pop(block)
    loss = q.float().square().sum() + k.float().sin().sum()
    loss.backward()
    return loss.detach(), x.grad, (em.grad if emb else None), ctx


def test_auto_and_resolved_chunks():
    assert wan_chunking.auto_chunks(75_600, 13_824) == 8  # Wan2.1-14B, 81 x 720 x 1280
    assert wan_chunking.auto_chunks(32_760, 8_960) == 3  # Wan2.1-1.3B, 81 x 480 x 832
    assert wan_chunking.auto_chunks(45, 32) == 1  # the tiny models: off
    assert wan_chunking.resolve_chunks(None, 45, 32) == 1
    assert wan_chunking.resolve_chunks(0, 100, 32) == wan_chunking.resolve_chunks(1, 100, 32) == 1
    assert wan_chunking.resolve_chunks(500, 45, 32) == 45  # never more slices than tokens
    with pytest.raises(ValueError, match=">= 0"):
        wan_chunking.resolve_chunks(-2, 45, 32)


def test_install_uninstall_restores_the_stock_forward():
    tr = _wan()
    stock = [b.ffn.forward for b in tr.blocks]
    assert wan_chunking.install(tr, 3) == 3 and wan_chunking.installed_chunks(tr) == 3  # the tail by default
    assert all(isinstance(b.forward, wan_chunking.SlicedTail) and b.forward.block is b for b in tr.blocks)
    assert all("forward" not in b.ffn.__dict__ for b in tr.blocks)
    assert wan_chunking.install(tr, 3, "ffn") == 3  # replaces the tail slicing, never stacks on it
    assert all("forward" not in b.__dict__ for b in tr.blocks)
    assert all(isinstance(b.ffn.forward, wan_chunking.ChunkedFFN) for b in tr.blocks)
    assert wan_chunking.install(tr, 4, "ffn") == 4  # idempotent: re-installing replaces, never nests
    assert all(b.ffn.forward.original == s for b, s in zip(tr.blocks, stock, strict=True))
    names = [n for n, _ in tr.named_parameters()]
    wan_chunking.uninstall(tr)
    assert wan_chunking.installed_chunks(tr) == 1 and "forward" not in tr.blocks[0].ffn.__dict__
    assert [n for n, _ in tr.named_parameters()] == names  # the module tree is never touched
    assert wan_chunking.install(tr, 1) == 1 and "forward" not in tr.blocks[0].ffn.__dict__
    wan_chunking.uninstall(wan_tiny.tiny_transformer())  # nothing installed: a no-op
    with pytest.raises(ValueError, match="scope"):
        wan_chunking.install(tr, 2, "block")


def test_tail_installs_beneath_group_offload_hooks():
    """With diffusers' hooks on the blocks the tail replaces the forward the innermost hook calls:
    ``block.forward`` stays the hooks' wrapper, and uninstall gives the hook its stock forward back."""
    tr = wan_tiny.tiny_transformer(layers=3)
    offload.apply_offload(tr, "group", "cpu")
    hooked = [b.forward for b in tr.blocks]
    wan_chunking.install(tr, 2)
    for b, h in zip(tr.blocks, hooked, strict=True):
        ref = b._diffusers_hook.hooks[b._diffusers_hook._hook_order[0]].fn_ref
        assert b.forward is h and isinstance(ref.forward, wan_chunking.SlicedTail)
    wan_chunking.uninstall(tr)
    for b, h in zip(tr.blocks, hooked, strict=True):
        ref = b._diffusers_hook.hooks[b._diffusers_hook._hook_order[0]].fn_ref
        assert b.forward is h and not isinstance(ref.forward, wan_chunking.SlicedTail)
        assert ref.forward.__func__ is type(b).forward  # the stock bound forward again


@pytest.mark.parametrize("dtype,scope,expand", [(torch.float32, "ffn", False), (torch.bfloat16, "ffn", False),
                                                (torch.float32, "tail", False), (torch.bfloat16, "tail", False),
                                                (torch.float32, "tail", True)])
def test_chunked_forward_is_bit_identical(dtype, scope, expand):
    x, e, _ = _wan_inputs(dtype)
    plain, chunked = _wan(dtype, expand=expand), _wan(dtype, chunks=4, scope=scope, expand=expand)
    for grad in (False, True):  # without gradients the stock forward runs; with them the slices
        with torch.set_grad_enabled(grad):
            a = WanFamily.forward(plain, x.detach().to(dtype), e, 500)
            b = WanFamily.forward(chunked, x.detach().to(dtype), e, 500)
        assert torch.equal(a, b), (grad, (a - b).abs().max())
    if scope == "tail":  # one block on its own, 45 tokens in 4 slices (not a divisor), a random temb
        blk, g = chunked.blocks[1], torch.Generator().manual_seed(3)
        h = torch.randn(1, 45, 32, generator=g).to(dtype)
        temb = torch.randn(1, 45, 6, 32, generator=g) if expand else torch.randn(1, 6, 32, generator=g)
        ctx = torch.randn(1, wan_tiny.TEXT_LEN, 32, generator=g).to(dtype)
        rope = chunked.rope(torch.zeros(1, wan_tiny.Z_DIM, 1, 10, 18))
        with torch.enable_grad():
            assert torch.equal(blk(h, ctx, temb, rope), blk.forward.original(h, ctx, temb, rope))
        return
    ffn = chunked.blocks[0].ffn
    h = torch.randn(1, 45, 32, dtype=dtype)
    with torch.enable_grad():
        assert torch.equal(ffn(h), ffn.forward.original(h))  # a slice count that does not divide 45


@pytest.mark.parametrize("dtype,emb,expand", [(torch.float32, False, False), (torch.bfloat16, False, False),
                                              (torch.float32, True, False), (torch.float32, False, True)])
def test_gradient_unchanged_by_chunking_and_activation_offload(dtype, emb, expand):
    ref = _wan_step(_wan(dtype, expand=expand), dtype, emb=emb)
    for chunks, off, scope in ((3, False, "ffn"), (3, False, "tail"), (1, True, "tail"), (4, True, "tail"),
                               (4, True, "ffn")):
        tr = _wan(dtype, chunks=chunks, scope=scope, expand=expand)
        got = _wan_step(tr, dtype, _host_copies() if off else None, emb=emb)
        assert torch.equal(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-6)
        assert torch.equal(got[1], ref[1])  # on the CPU: exactly
        if emb:
            assert torch.equal(got[2], ref[2])


def test_activation_offload_packs_block_inputs_once_and_unwinds_after_stop():
    """Through StopForward the context pops its hooks; each checkpointed block's input went to the
    host (as save_on_cpu's copy), the arguments shared by the blocks once."""
    tr = _wan(layers=5)
    _, _, _, ctx = _wan_step(tr, torch.float32, _host_copies(), block=3)
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    n, d = 45, 32
    # 4 block inputs [1, N, D], projected text and timestep projection once, the patch conv's input and weight
    assert ctx.packed_tensors == 4 + 2 + 2, ctx.packed_tensors
    assert ctx.packed_bytes >= 4 * n * d * 4


def test_activation_offload_is_a_noop_context_on_the_cpu_and_when_off():
    import contextlib

    assert isinstance(offload.activation_offload("cpu", True), contextlib.nullcontext)
    assert isinstance(offload.activation_offload("cuda", False), contextlib.nullcontext)
    ctx = offload.activation_offload("cuda", True)
    assert isinstance(ctx, offload.ActivationOffload)  # built without touching CUDA


def test_inplace_change_after_packing_is_repacked():
    """A tensor changed in place after it was saved is packed again (the version is part of the hit)."""
    a = torch.randn(5, requires_grad=True)
    with _host_copies() as ctx:
        b = a * 2
        b.sin()  # saves b
        b.sin()  # the same b: no second copy
        b.detach().add_(1)  # b's version changes
        b.cos()  # saves b again: a new copy
    assert ctx.packed_tensors == 2


def test_group_offload_composes_with_both(monkeypatch):
    """Group offloading (diffusers hooks, eviction), chunked FFN and activation offload together: the
    same gradient as a plain checkpointed run."""
    ref_tr, tr = _wan(layers=6), wan_tiny.tiny_transformer(layers=6)
    offload.apply_offload(tr, "group", "cpu")
    hooked = [b.forward for b in tr.blocks]
    tr.enable_gradient_checkpointing()
    WanFamily.install(tr)
    wan_chunking.install(tr, 3)
    ref = _wan_step(ref_tr, torch.float32, block=4)
    got = _wan_step(tr, torch.float32, _host_copies(), block=4)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert offload.settle(tr) == 3
    assert [b.forward for b in tr.blocks] == hooked  # the hooks' wrappers, the tail beneath them


# -- through the loop (Guide._loss / _optimise) ------------------------------------------------------

def _wan_guide(**kw):
    from ditflow_fast.guidance.loop import Guide

    tr = wan_tiny.tiny_transformer(layers=3)
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10, generator=g)
    pe = wan_tiny.tiny_prompt_embeds()
    cfg = GuidanceConfig(**dict(dict(model="tiny-wan", steps=4, guided_steps=2, opt_iters=2, frames=9, height=48,
                                     width=80, lr=(0.05, 0.02)), **kw)).resolve(tr, device="cpu")
    return Guide(tr, wan_tiny.tiny_scheduler(), ref_latent=ref, prompt_embeds=pe["prompt"],
                 negative_embeds=pe["negative"], config=cfg, model_id="tiny-wan", family=WanFamily)


def _cog_guide(**kw):
    from ditflow_fast.families.cogvideox import tiny
    from ditflow_fast.guidance.loop import Guide

    tr = tiny.tiny_transformer(True)
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(1, 3, 4, 6, 8, generator=g)
    pe = tiny.tiny_prompt_embeds()
    cfg = GuidanceConfig(**dict(dict(model="tiny", steps=4, guided_steps=2, opt_iters=2, height=48, width=64,
                                     frames=9, lr=(0.05, 0.02)), **kw)).resolve(tr, device="cpu")
    return Guide(tr, tiny.tiny_scheduler(True), ref_latent=ref, prompt_embeds=pe["prompt"],
                 negative_embeds=pe["negative"], config=cfg, model_id="tiny")


def _loop_loss_and_grad(guide, opt_mode="latent"):
    t = guide.timesteps[0]
    targets = guide.reference_targets()
    x = guide.noise.detach().float().clone().requires_grad_(opt_mode == "latent")
    emb = None
    if opt_mode == "emb":
        emb = guide.family.initial_emb(guide.tr, guide.ref).float().clone().requires_grad_(True)
    loss = guide._loss(x, t, emb, targets, guide.tr)
    loss.backward()
    return loss.detach(), (x.grad if emb is None else emb.grad)


@pytest.mark.parametrize("family,opt_mode", [("wan", "latent"), ("wan", "emb"), ("cog", "latent"), ("cog", "emb")])
def test_loop_loss_and_gradient_unchanged(monkeypatch, family, opt_mode):
    """Guide._loss with offload_activations on (save_on_cpu copies on the CPU) and, for Wan, the FFN in
    slices: the loss and the gradient equal those of the plain run (exactly here; 1e-6 asserted)."""
    from ditflow_fast.guidance import loop

    make = _wan_guide if family == "wan" else _cog_guide
    ref = _loop_loss_and_grad(make(opt_mode=opt_mode), opt_mode)
    calls = []

    def copies(device, enabled=True, **kw):
        calls.append(enabled)
        return _host_copies() if enabled else offload.activation_offload(device, False)

    monkeypatch.setattr(loop, "activation_offload", copies)
    extra = dict(ffn_chunks=3) if family == "wan" else {}
    guide = make(opt_mode=opt_mode, offload_activations=True, **extra)
    if family == "wan":
        assert wan_chunking.installed_chunks(guide.tr) == 3
    got = _loop_loss_and_grad(guide, opt_mode)
    assert calls == [True]
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-6)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_loop_installs_automatic_chunking_off_for_tiny_models():
    guide = _wan_guide()
    assert wan_chunking.installed_chunks(guide.tr) == 1  # 45 tokens x 32: far under the automatic limit
    assert guide.cfg.ffn_chunks is None and guide.cfg.offload_activations is False


def test_config_validation_and_run_key_unchanged():
    import dataclasses
    import hashlib
    import json

    base = GuidanceConfig()
    # the key of a run saved before the options existed: the same dictionary without them
    d = base.to_dict()
    for k in ("device", "cpu_offload", "vae_slicing", "vae_tiling", "extra", "cfg_min_t", "cfg_scale_2",
              "flow_shift", "offload_activations", "ffn_chunks", "grad_reuse", "early_stop", "amf_window",
              "amf_window_frames", "amf_rope"):
        d.pop(k, None)
    assert base.run_key() == hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert dataclasses.replace(base, offload_activations=True).run_key() == base.run_key()  # placement only
    assert dataclasses.replace(base, ffn_chunks=4).run_key() != base.run_key()
    with pytest.raises(ValueError, match="ffn_chunks"):
        GuidanceConfig(ffn_chunks=-1).validate()
    with pytest.raises(ValueError, match="checkpointing"):
        GuidanceConfig(offload_activations=True, gradient_checkpointing=False).validate()


def _args(*argv):
    from ditflow_fast.cli import transfer as transfer_cli

    p = argparse.ArgumentParser()
    transfer_cli.add_transfer_parser(p.add_subparsers())
    return p.parse_args(["transfer", *argv])


def test_cli_flags_and_defaults():
    from ditflow_fast.transfer_api import TransferOptions

    def config(*argv):
        return TransferOptions.from_namespace(_args(*argv)).guidance_config("m")

    assert config().offload_activations is False
    assert config("--offload", "group").offload_activations is True  # on with group
    assert config("--offload", "group", "--no-offload-activations").offload_activations is False
    assert config("--offload-activations").offload_activations is True
    assert config("--ffn-chunks", "6").ffn_chunks == 6
    assert config().ffn_chunks is None


def test_cli_dry_run_prints_the_options(capsys):
    from ditflow_fast.cli import transfer as transfer_cli

    model = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    common = ("--model", model, "--frames", "81", "--height", "720", "--width", "1280", "--dry-run")
    assert transfer_cli.run_transfer(_args(*common, "--offload", "group")) == 0
    group = capsys.readouterr().out
    assert "activations offloaded" in group and "FFN) in 8 token slices" in group
    assert transfer_cli.run_transfer(_args(*common, "--offload", "group", "--no-offload-activations",
                                           "--ffn-chunks", "0")) == 0
    plain = capsys.readouterr().out
    assert "activations offloaded" not in plain and "token slices" not in plain
