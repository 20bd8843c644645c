"""``GuidanceConfig.amf_rope``: the AMF from q/k with their RoPE (DiTFlow's) or before it, through the loop."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from _transfer_helpers import tiny_guide  # noqa: E402

from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402
from ditflow_fast.guidance.ref_cache import RefCache  # noqa: E402
from ditflow_fast.transfer_api.options import TransferOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_default_keeps_earlier_run_keys_and_a_bad_value_is_named():
    base = GuidanceConfig(model="m")
    assert GuidanceConfig(model="m", amf_rope=True).run_key() == base.run_key()
    assert GuidanceConfig(model="m", amf_rope=False).run_key() != base.run_key()
    with pytest.raises(ValueError, match="amf_rope"):
        GuidanceConfig(model="m", amf_rope="no").validate()


def test_the_transfer_option_reaches_the_config():
    assert TransferOptions.from_kwargs(amf_no_rope=True).guidance_config("m").amf_rope is False
    assert TransferOptions.from_kwargs().guidance_config("m").amf_rope is True
    with pytest.raises(TypeError, match="--amf-no-rope"):
        TransferOptions.from_kwargs(amf_no_rope="yes")


def test_the_loop_compares_the_amf_before_rope_and_caches_it_apart(tmp_path):
    cache = RefCache(tmp_path, model="tiny")
    with_rope, plain = tiny_guide(ref_cache=cache), tiny_guide(ref_cache=cache, amf_rope=False)
    t_rope, t_plain = with_rope.reference_targets(), plain.reference_targets()
    assert [e["hit"] for e in cache.events] == [False, False]  # two keys: neither reused the other's targets
    (block,) = t_rope
    assert t_rope[block]["amf"].shape == t_plain[block]["amf"].shape
    assert not torch.equal(t_rope[block]["amf"], t_plain[block]["amf"])
    # the generation's AMF follows the same setting: the runs differ from the first loss on
    res_rope, res_plain = with_rope.run(progress=False), plain.run(progress=False)
    first = max(res_rope.losses)
    assert res_rope.losses[first][0] != pytest.approx(res_plain.losses[first][0], rel=1e-4)
    assert torch.isfinite(res_plain.latents).all() and not torch.equal(res_rope.latents, res_plain.latents)
    # and a second run without RoPE finds its own targets in the cache
    again = tiny_guide(ref_cache=cache, amf_rope=False)
    assert torch.equal(again.reference_targets()[block]["amf"], t_plain[block]["amf"]) and cache.events[-1]["hit"]


def test_emb_mode_at_block_0_alone_is_refused_before_any_work():
    """Before RoPE, block 0's q/k do not depend on the RoPE tables that emb mode optimises: no gradient."""
    bad = GuidanceConfig(model="m", opt_mode="emb", amf_rope=False, guidance_blocks=(0,))
    with pytest.raises(ValueError, match=r"amf_rope=False.*emb.*block 0"):
        bad.validate()
    with pytest.raises(ValueError, match=r"amf_rope=False.*emb.*block 0"):
        bad.resolve(tiny.tiny_transformer(True), device="cpu")
    for fine in (dict(guidance_blocks=(0, 1)), dict(amf_rope=True), dict(opt_mode="latent"), dict(loss="moft")):
        GuidanceConfig(model="m", **{**dict(opt_mode="emb", amf_rope=False, guidance_blocks=(0,)), **fine}).validate()
