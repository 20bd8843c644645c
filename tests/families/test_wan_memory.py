"""The Wan memory model (ditflow_fast.families.wan.memory) against torch's measured memory timeline
of a guided iteration on a Wan-shaped tiny transformer (CPU), and its numbers for the public presets."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from _memory_timeline import guided_iteration_peak  # noqa: E402

from ditflow_fast.backends.reference import research_bytes  # noqa: E402
from ditflow_fast.families.wan.family import PRESETS, WanFamily  # noqa: E402
from ditflow_fast.families.wan.memory import dry_run_table, estimate_wan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# Not the shape the constants were measured on (4 heads x 64, ffn 2x/6x, 3 frames of 10 x 14, 16 text
# tokens): 8 heads x 32 (head_dim / D = 1/8, nearer the real 1/12), ffn 3x, 2 latent frames of 12 x 16.
HEADS, HD, FFN_MULT, FRAMES, HH, WW, TEXT, TEXT_DIM, Z = 8, 32, 3, 2, 12, 16, 24, 32, 4
GiB = 2**30


def _tiny_entry(expand=False, layers=5):
    d = HEADS * HD
    tr = dict(patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HD, in_channels=Z, out_channels=Z,
              text_dim=TEXT_DIM, freq_dim=32, ffn_dim=FFN_MULT * d, num_layers=layers, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    vae = dict(z_dim=Z, scale_factor_spatial=8, scale_factor_temporal=4, base_dim=2, dim_mult=[1, 1, 1, 1],
               num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True])
    return dict(transformer=tr, vae=vae, text_len=TEXT, experts=1, expand_timesteps=expand)


def _measured(tmp_path, entry, *, block, checkpointing, dtype, opt_mode="latent", chunks=1, host=False) -> int:
    """Peak minus start of one steady-state guided iteration: forward truncated after ``block`` with
    q/k captured, a dense gradient into q and k (what the AMF loss gives), backward. ``chunks``: the
    FFN in token slices (wan_chunking); ``host``: the saved tensors in (emulated) host memory."""
    from diffusers import WanTransformer3DModel

    from ditflow_fast.families.wan import chunking as wan_chunking

    torch.manual_seed(0)
    tr = WanTransformer3DModel(**entry["transformer"]).eval().requires_grad_(False).to(dtype)
    tr._ditflow_expand_timesteps = entry["expand_timesteps"]
    if checkpointing:
        tr.enable_gradient_checkpointing()
    WanFamily.install(tr)
    wan_chunking.install(tr, chunks)
    x = torch.randn(1, Z, FRAMES, HH * 2, WW * 2, requires_grad=opt_mode == "latent")
    e = torch.randn(1, TEXT, TEXT_DIM, dtype=dtype)
    n = FRAMES * HH * WW
    weights = torch.randn(2, 1, HEADS, n, HD, dtype=dtype)
    emb = WanFamily.initial_emb(tr, x).requires_grad_(True) if opt_mode == "emb" else None
    return guided_iteration_peak(tmp_path, WanFamily, tr, x, e, 500, emb, block=block, weights=weights, dtype=dtype,
                                 host=host)


def _predicted(entry, *, block, checkpointing, b, opt_mode="latent", chunks=1, host=False) -> int:
    """The model's activations for the measured iteration: the total less what the measurement does
    not allocate (weights, the AMF, which it replaces by a dense gradient, the text input, and the
    optimised tensor and Adam's moments: only its gradient is new in an iteration)."""
    est = estimate_wan(entry, frames=(FRAMES - 1) * 4 + 1, height=HH * 16, width=WW * 16, guidance_block=block,
                       bytes_per_elem=b, checkpointing=checkpointing, offload="model", opt_mode=opt_mode,
                       offload_activations=host, ffn_chunks=chunks)
    assert est.ffn_chunks_used == (chunks if checkpointing else 1)
    c = est.components
    return (est.total - c["transformer weights"] - c["VAE weights"] - c["AMF working set"]
            - TEXT * TEXT_DIM * b - c["optimised tensor + Adam (fp32)"] * 3 // 4)


@pytest.mark.parametrize("checkpointing,dtype,expand,opt_mode", [
    (True, torch.bfloat16, False, "latent"),
    (False, torch.bfloat16, False, "latent"),
    (True, torch.float32, False, "latent"),
    (True, torch.bfloat16, True, "latent"),  # TI2V-5B's per-token timesteps
    (True, torch.bfloat16, False, "emb"),
])
def test_activation_constants_match_measured_peak(tmp_path, checkpointing, dtype, expand, opt_mode):
    entry, block = _tiny_entry(expand), 3
    measured = _measured(tmp_path, entry, block=block, checkpointing=checkpointing, dtype=dtype, opt_mode=opt_mode)
    b = 2 if dtype == torch.bfloat16 else 4
    predicted = _predicted(entry, block=block, checkpointing=checkpointing, b=b, opt_mode=opt_mode)
    print(f"ckpt={checkpointing} {dtype} expand={expand} {opt_mode}: measured {measured / 2**20:.2f} MiB, "
          f"predicted {predicted / 2**20:.2f} MiB")
    assert abs(predicted - measured) / measured < 0.10, (predicted, measured)


@pytest.mark.parametrize("dtype,chunks,host", [
    (torch.bfloat16, 3, False),  # slices of [N/3, ffn_dim]: the peak leaves the FFN
    (torch.bfloat16, 1, True),  # block inputs in host memory
    (torch.bfloat16, 3, True),  # both
    (torch.bfloat16, 2, True),  # both, FFN width 3x over 2 slices
    (torch.float32, 3, True),
])
def test_offload_and_chunking_constants_match_measured_peak(tmp_path, dtype, chunks, host):
    entry, block = _tiny_entry(), 3
    measured = _measured(tmp_path, entry, block=block, checkpointing=True, dtype=dtype, chunks=chunks, host=host)
    b = 2 if dtype == torch.bfloat16 else 4
    predicted = _predicted(entry, block=block, checkpointing=True, b=b, chunks=chunks, host=host)
    print(f"{dtype} chunks={chunks} host={host}: measured {measured / 2**20:.2f} MiB, "
          f"predicted {predicted / 2**20:.2f} MiB")
    assert abs(predicted - measured) / measured < 0.10, (predicted, measured)


def test_offloaded_inputs_do_not_grow_with_the_guidance_block(tmp_path):
    entry = _tiny_entry(layers=6)
    m1, m4 = (_measured(tmp_path, entry, block=g, checkpointing=True, dtype=torch.bfloat16, chunks=3, host=True)
              for g in (1, 4))
    plain1, plain4 = (_measured(tmp_path, entry, block=g, checkpointing=True, dtype=torch.bfloat16) for g in (1, 4))
    u = FRAMES * HH * WW * HEADS * HD * 2
    assert abs(m4 - m1) < 0.5 * u  # offloaded: three more blocks cost (almost) nothing on the device (0.31 U)
    assert abs((plain4 - plain1) - 3 * u) < 0.5 * u  # on the device: one [N, D] per block


def test_per_block_slope_without_checkpointing(tmp_path):
    """The per-block constant on its own: two more saved blocks cost what the model says."""
    entry = _tiny_entry(layers=6)
    m1 = _measured(tmp_path, entry, block=1, checkpointing=False, dtype=torch.bfloat16)
    m3 = _measured(tmp_path, entry, block=3, checkpointing=False, dtype=torch.bfloat16)
    p1, p3 = (_predicted(entry, block=g, checkpointing=False, b=2) for g in (1, 3))
    assert abs((p3 - p1) - (m3 - m1)) / (m3 - m1) < 0.10, (p3 - p1, m3 - m1)


def _est(model, frames=81, height=480, width=832, **kw):
    block = WanFamily.defaults(PRESETS[model])["guidance_blocks"][-1]
    return estimate_wan(model, frames=frames, height=height, width=width, guidance_block=block, **kw)


MODELS = ["Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers",
          "Wan-AI/Wan2.2-T2V-A14B-Diffusers"]


def test_public_presets_without_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ests = {m: _est(m, height=704 if "TI2V" in m else 480, width=1280 if "TI2V" in m else 832) for m in MODELS}
    totals = [ests[m].total for m in MODELS]
    assert totals[0] < totals[1] < totals[2] == totals[3]  # 1.3B < 5B < 14B = A14B (one expert resident)
    for m, est in ests.items():
        assert est.research_total > est.total
        assert est.research_components["AMF working set"] > 50 * est.components["AMF working set"]
        for off in ("model", "group"):
            o = _est(m, height=704 if "TI2V" in m else 480, width=1280 if "TI2V" in m else 832, offload=off)
            assert o.components["VAE weights"] == 0 < est.components["VAE weights"]
            assert o.total < est.total
        g = _est(m, height=704 if "TI2V" in m else 480, width=1280 if "TI2V" in m else 832, offload="group")
        assert g.components["transformer weights"] < est.components["transformer weights"] / 5
    one = ests[MODELS[0]]
    assert one.research_components["AMF working set"] == research_bytes(12, 21, 30, 52, 2)
    assert abs(one.components["transformer weights"] / 2 - 1_418_996_800) < 1


def test_issue_targets():
    """Wan2.1-1.3B at 81 x 480 x 832 under 12 GiB. 14B at 81 frames: 480p fits 48 GB unoffloaded and 24 GB
    with group offload; 720p misses both without the options, and meets both with activation offload
    and the block's tail in slices (8, automatic; issue 31: 22 GiB with group offload) -- predicted,
    from constants measured on tiny models, not tuned to the targets."""
    assert _est(MODELS[0]).total <= 12 * GiB
    assert _est(MODELS[2]).total <= 48e9 and _est(MODELS[2], offload="group").total <= 24e9
    assert _est(MODELS[2], height=720, width=1280, ffn_chunks=0).total > 48e9
    assert _est(MODELS[2], height=720, width=1280, offload="group", ffn_chunks=0).total > 24e9
    best = {off: _est(MODELS[2], height=720, width=1280, offload=off, offload_activations=True)
            for off in ("none", "group")}
    plain = {off: _est(MODELS[2], height=720, width=1280, offload=off, ffn_chunks=0) for off in ("none", "group")}
    assert best["group"].ffn_chunks_used == 8 and plain["group"].ffn_chunks_used == 1
    for off in ("none", "group"):
        assert best[off].total < plain[off].total - 20 * GiB
        assert best[off].components["checkpointed block inputs"] == 0
    assert 16 * GiB < best["group"].total <= 22 * GiB and 40 * GiB < best["none"].total < 48e9
    assert best["group"].host_bytes > 14 * GiB  # the 20 block inputs wait in (pinned) host memory


def test_no_checkpointing_and_emb_mode_cost_more():
    base = _est(MODELS[0])
    assert _est(MODELS[0], checkpointing=False).total > base.total
    assert _est(MODELS[0], opt_mode="emb").components["optimised tensor + Adam (fp32)"] > 0


def test_dry_run_table_header_and_rows():
    text = dry_run_table("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", offload="group")
    head = text.splitlines()[0]
    for word in ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "81 frames", "480x832", "guidance block 14", "bfloat16",
                 "offload group"):
        assert word in head
    assert "predicted peak" in text and "AMF working set" in text
    assert "2 experts" in dry_run_table("Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    assert "121 frames, 704x1280" in dry_run_table("Wan-AI/Wan2.2-TI2V-5B-Diffusers")


def test_bad_arguments():
    from ditflow_fast.errors import ModelError

    with pytest.raises(ModelError, match="4k\\+1"):
        _est(MODELS[0], frames=80)
    with pytest.raises(ValueError, match="offload"):
        _est(MODELS[0], offload="disk")
    with pytest.raises(ModelError, match="no Wan preset"):
        estimate_wan("nope/nope", frames=81, height=480, width=832, guidance_block=1)


def test_local_folder_config(tmp_path):
    from ditflow_fast.families.wan import tiny as wan_tiny

    path = wan_tiny.save_tiny_wan(tmp_path / "m", two_experts=True)
    text = dry_run_table(str(path))
    assert "9 frames, 48x80" in text and "2 experts" in text


# -- offloading (ditflow_fast.families.offload) on the CPU -------------------------------------------

def _tiny_run(tr, block=1, checkpointing=False, backward=False):
    from ditflow_fast.families.wan import tiny as wan_tiny

    if checkpointing:
        tr.enable_gradient_checkpointing()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10, generator=g, requires_grad=backward)
    e = torch.randn(1, wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM, generator=g)
    ctrl = WanFamily.run_until(tr, x, e, 500, stop_after=block, qk_blocks=[block])
    q, k = ctrl.qk.pop(block)
    if backward:
        (q.square().sum() + k.sum()).backward()
    return q.detach(), k.detach(), x.grad


def test_group_offload_on_cpu_installs_hooks_and_keeps_outputs():
    from ditflow_fast.families import offload
    from ditflow_fast.families.wan import tiny as wan_tiny

    ref = wan_tiny.tiny_transformer()
    x = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10)
    e = torch.randn(1, wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM)
    with torch.no_grad():
        stock = WanFamily.forward(ref, x, e, 500)
    tr = wan_tiny.tiny_transformer()
    offload.apply_offload({"transformer": tr}, "group", "cpu")
    assert offload.is_group_offloaded(tr) and len(offload._groups(tr)) == len(tr.blocks) + 1
    with torch.no_grad():
        assert torch.equal(WanFamily.forward(tr, x, e, 500), stock)
    # Our guided processors capture q/k under group offloading (the hooks fire, the records match).
    WanFamily.install(ref)
    WanFamily.install(tr)
    q0, k0, _ = _tiny_run(ref)
    q1, k1, _ = _tiny_run(tr)
    assert torch.equal(q0, q1) and torch.equal(k0, k1)


def test_group_offload_backward_keeps_two_blocks_and_settle_clears_the_rest():
    """The checkpointed backward's early-stopped recomputation never offloads a block (without the
    eviction every block down to the guidance block stays onloaded); with it at most two block groups
    are onloaded at any time, the gradient is unchanged, and settle() sends back what is left."""
    from ditflow_fast.families import offload
    from ditflow_fast.families.wan import tiny as wan_tiny

    ref, tr = wan_tiny.tiny_transformer(layers=6), wan_tiny.tiny_transformer(layers=6)
    offload.apply_offload(tr, "group", "cpu")
    for m in (ref, tr):
        WanFamily.install(m)
    groups = offload._groups(tr)
    peak = [0]
    for g in groups:
        def watched(on=g.onload_):
            on()
            peak[0] = max(peak[0], sum(x._ditflow_onloaded and x._ditflow_index is not None for x in groups))
        g.onload_ = watched
    _, _, g0 = _tiny_run(ref, block=4, checkpointing=True, backward=True)
    _, _, g1 = _tiny_run(tr, block=4, checkpointing=True, backward=True)
    assert torch.equal(g0, g1)  # the same gradient through the hooks
    assert peak[0] == 2
    left = offload.onloaded_groups(tr)
    assert sorted(str(g._ditflow_index) for g in left) == ["0", "1", "None"]  # top level (StopForward), 2 blocks
    assert offload.settle(tr) == 3 and offload.onloaded_groups(tr) == []
    assert offload.settle(wan_tiny.tiny_transformer()) == 0  # no group offloading: nothing to do
    with pytest.raises(ValueError, match="checkpointing"):
        offload.apply_offload(wan_tiny.tiny_transformer(), "group", "cpu", checkpointing=False)


def test_model_offload_hooks_keep_one_component_resident():
    from ditflow_fast.families import offload
    from ditflow_fast.families.wan import tiny as wan_tiny

    tr, tr2, vae = wan_tiny.tiny_transformer(), wan_tiny.tiny_transformer(seed=1), wan_tiny.tiny_vae()
    z = torch.randn(1, wan_tiny.Z_DIM, 1, 6, 10)
    with torch.no_grad():
        plain = vae.decode(z).sample
    handles = offload.apply_offload({"transformer": tr, "transformer_2": tr2, "vae": vae}, "model", "cpu")
    assert set(handles) == {"transformer", "transformer_2", "vae"}
    assert all(hasattr(m, "_hf_hook") for m in (tr, tr2, vae))
    x = torch.randn(1, wan_tiny.Z_DIM, 3, 6, 10)
    e = torch.randn(1, wan_tiny.TEXT_LEN, wan_tiny.TEXT_DIM)
    with torch.no_grad():
        out = WanFamily.forward(tr, x, e, 500)
        assert torch.equal(out, WanFamily.forward(wan_tiny.tiny_transformer(), x, e, 500))
        assert torch.equal(vae.decode(z).sample, plain)  # through apply_forward_hook and the hook's pre_forward
    with pytest.raises(ValueError, match="offload mode"):
        offload.apply_offload(tr, "disk", "cpu")


def test_expert_swap_is_a_noop_when_placed():
    from ditflow_fast.families import offload
    from ditflow_fast.families.wan import tiny as wan_tiny

    a, b = wan_tiny.tiny_transformer(), wan_tiny.tiny_transformer(seed=1)
    moved = []
    for m in (a, b):
        orig = m.to
        m.to = lambda *args, _o=orig, _m=m, **kw: (moved.append(_m), _o(*args, **kw))[1]
    offload.expert_swap(a, b, "cpu")
    assert moved == []  # both already where they belong (the CPU is the device here)
    offload.apply_offload(b, "group", "cpu")
    offload.expert_swap(b, a, "cpu")  # group-offloaded experts manage themselves
    assert moved == [b]  # only apply_offload's own move


def test_dry_run_table_takes_the_cli_arguments():
    text = dry_run_table("Wan-AI/Wan2.1-T2V-14B-Diffusers", frames=81, height=720, width=1280, guidance_blocks=[10, 12],
                         dtype="float32", opt_mode="emb", checkpointing=False, offload="model")
    head = text.splitlines()[0]
    assert "720x1280" in head and "guidance blocks 10, 12," in head and "float32" in head
    assert "checkpointing off" in head
