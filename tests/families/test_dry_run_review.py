"""``transfer --dry-run`` against what the run does (session 17's review): the Wan VAE's float32 weights,
``--cpu-offload`` for Wan, every guidance block's q/k, and the run's own refusals of blocks and sizes."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families.cogvideox.family import CogVideoXFamily  # noqa: E402
from ditflow_fast.families.estimate import config_json, meta_counts  # noqa: E402
from ditflow_fast.families.hunyuan.family import HunyuanVideoFamily  # noqa: E402
from ditflow_fast.families.ltx.family import LTXFamily  # noqa: E402
from ditflow_fast.families.wan.family import WanFamily  # noqa: E402
from ditflow_fast.families.wan.memory import estimate_wan  # noqa: E402
from ditflow_fast.families.wan.presets import PRESETS as WAN_PRESETS  # noqa: E402
from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WAN = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
QK_ROW = "captured q, k and grads"
MODELS = [(CogVideoXFamily, "THUDM/CogVideoX-5b"), (WanFamily, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
          (HunyuanVideoFamily, "hunyuanvideo-community/HunyuanVideo"), (LTXFamily, "Lightricks/LTX-Video")]


def _row(table: str, name: str) -> float:
    """A row's ditflow_fast column in GiB."""
    line = next(line for line in table.splitlines() if line.startswith(name))
    return float(line[len(name):].split()[0])


@pytest.mark.parametrize("b", [2, 4])
def test_wan_vae_counted_in_float32(b):
    """WanFamily.load keeps the VAE in float32 whatever the run's dtype, so its weights take 4 bytes each."""
    vae = meta_counts("AutoencoderKLWan", config_json(WAN_PRESETS[WAN]["vae"]))[0]
    est = estimate_wan(WAN, frames=121, height=704, width=1280, guidance_block=14, bytes_per_elem=b)
    assert est.components["VAE weights"] == est.research_components["VAE weights"] == 4 * vae
    # the VAE alone is what --offload model takes off the GPU
    model = estimate_wan(WAN, frames=121, height=704, width=1280, guidance_block=14, bytes_per_elem=b, offload="model")
    assert est.total - model.total == 4 * vae


def test_wan_dry_run_reads_cpu_offload_as_model_offload():
    model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    cpu = WanFamily.dry_run_table(model, GuidanceConfig(cpu_offload=True), "none")
    assert "offload model" in cpu.splitlines()[0]
    assert cpu == WanFamily.dry_run_table(model, GuidanceConfig(), "model")
    assert _row(cpu, "VAE weights") == 0 < _row(WanFamily.dry_run_table(model, GuidanceConfig(), "none"), "VAE weights")


@pytest.mark.parametrize("fam,model", MODELS)
def test_every_guidance_block_keeps_its_q_and_k(fam, model):
    """One soft AMF per block, each holding its q and k: a second block adds half the one-block q/k row (two of its
    four [N, D] tensors), the deepest block still sets the activations; the header names every block."""
    deepest = max(fam.defaults(fam.memory_config(model))["guidance_blocks"])
    one = fam.dry_run_table(model, GuidanceConfig(guidance_blocks=(deepest,)), "none")
    two = fam.dry_run_table(model, GuidanceConfig(guidance_blocks=(deepest - 3, deepest)), "none")
    three = fam.dry_run_table(model, GuidanceConfig(guidance_blocks=(deepest - 3, deepest - 1, deepest)), "none")
    qk = _row(one, QK_ROW)
    assert _row(two, QK_ROW) == pytest.approx(1.5 * qk, abs=0.011)
    assert _row(three, QK_ROW) == pytest.approx(2 * qk, abs=0.011)
    assert _row(two, "predicted peak") == pytest.approx(_row(one, "predicted peak") + qk / 2, abs=0.011)
    assert f"guidance blocks {deepest - 3}, {deepest}," in two.splitlines()[0]
    assert f"guidance block {deepest}," in one.splitlines()[0]


def test_cogvideox_estimate_refuses_a_block_the_model_lacks():
    with pytest.raises(ValueError, match="guidance block 100 out of range: the transformer has 42 blocks"):
        CogVideoXFamily.dry_run_table("THUDM/CogVideoX-5b", GuidanceConfig(guidance_blocks=(100,)), "none")


@pytest.mark.parametrize("fam,model,size,message", [
    (CogVideoXFamily, "THUDM/CogVideoX-5b", dict(height=484), "--height/--width 484x720: must be multiples of 16"),
    (CogVideoXFamily, "THUDM/CogVideoX1.5-5B", dict(height=1600, width=2720), "RoPE grid covers at most"),
    (HunyuanVideoFamily, "hunyuanvideo-community/HunyuanVideo", dict(height=500),
     "--height/--width 500x1280: must be multiples of 16x16"),
    (LTXFamily, "Lightricks/LTX-Video", dict(width=500), "--height/--width 512x500: must be multiples of 32"),
])
def test_dry_run_refuses_a_size_the_run_refuses(fam, model, size, message):
    """The family's own geometry (the run's size rule and message) runs on the configs before the table."""
    with pytest.raises(ModelError, match=message.replace("+", "\\+")):
        fam.dry_run_table(model, GuidanceConfig(**size), "none")


def test_cogvideox_group_offload_prediction_says_it_is_an_upper_bound(capsys):
    from ditflow_fast.cli.main import main

    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b", "--frames", "49", "--offload", "group"]) == 0
    assert "--offload group: an upper bound" in capsys.readouterr().out
    assert main(["transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b", "--frames", "49"]) == 0
    assert "upper bound" not in capsys.readouterr().out
