"""The peer rows of the demo, through the same guidance loop on both toy families: FastVMT-style (windowed AMF
loss, gradient reuse 3, no KV injection) and RoPE-only AMF (RoPE tables optimised, no KV injection)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")

from ditflow_fast.toyworld.demo import ToyTransfer, other_condition  # noqa: E402
from ditflow_fast.toyworld.model import DEFAULT_DIR  # noqa: E402
from ditflow_fast.toyworld.settings import ROWS, DemoSettings  # noqa: E402
from ditflow_fast.toyworld.world import reference_clips  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
WAN_DIR = DEFAULT_DIR.parent / "tiny_wan"


@pytest.fixture(scope="module", params=["cogvideox", "wan"])
def toy(request):
    model = DEFAULT_DIR if request.param == "cogvideox" else WAN_DIR
    if not (model / "transformer" / "config.json").is_file():
        pytest.skip(f"{model} is not in this checkout")
    # the demo's settings asked for no gradient reuse: the FastVMT-style row keeps its own 3
    return ToyTransfer(model, DemoSettings(steps=4, guided_steps=2, opt_iters=5, grad_reuse=1))


def test_the_rows_are_what_their_names_say():
    fast = ROWS["FastVMT-style"]
    assert fast["loss"] == "flow_window" and fast["grad_reuse"] == 3 and fast["injection"] is False
    assert fast["opt_mode"] == "latent"
    rope = ROWS["RoPE-only AMF"]
    assert rope["opt_mode"] == "emb" and rope["injection"] is False and rope.get("guidance", True)


def test_fastvmt_style_row_reuses_gradients_and_guides(toy):
    ref = reference_clips(0, 1)[0]
    target = other_condition(ref.condition)
    cfg = toy._config("FastVMT-style", 0)
    assert (cfg.loss, cfg.grad_reuse, cfg.injection, cfg.amf_window, cfg.amf_window_frames) == (
        "flow_window", 3, False, 5, 3)
    assert toy._config("DiTFlow latent", 0).grad_reuse == 1  # the other rows keep the demo's setting
    plain, _ = toy.generate(ref, target, "no guidance", seed=0)
    video, losses = toy.generate(ref, target, "FastVMT-style", seed=0)
    # 5 iterations with a real pass every 3rd: passes at iterations 1 and 4 of each of the 2 guided steps
    assert len(losses) == 2 and all(len(h) == 2 for h in losses.values())
    assert toy.last_result.passes == 4
    assert all(np.isfinite(h).all() and min(h) >= 0 for h in losses.values())
    assert np.abs(video - plain).max() > 1e-4


def test_rope_only_row_moves_through_the_embeddings_alone(toy):
    ref = reference_clips(0, 1)[0]
    target = other_condition(ref.condition)
    cfg = toy._config("RoPE-only AMF", 0)
    assert cfg.opt_mode == "emb" and not cfg.injection and cfg.loss == "flow"
    plain, _ = toy.generate(ref, target, "no guidance", seed=0)
    video, losses = toy.generate(ref, target, "RoPE-only AMF", seed=0)
    assert len(losses) == 2 and all(len(h) == 5 for h in losses.values())
    assert np.abs(video - plain).max() > 1e-4
