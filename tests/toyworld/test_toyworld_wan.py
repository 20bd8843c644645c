"""The toy world's Wan-architecture model: training (resumable), loading, sampling and the demo through
the Wan family's real path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast.families import WanFamily, family_of  # noqa: E402
from ditflow_fast.toyworld.codec import load_codec  # noqa: E402
from ditflow_fast.toyworld.model import DEFAULT_DIR, load_model  # noqa: E402
from ditflow_fast.toyworld.sample import sample  # noqa: E402
from ditflow_fast.toyworld.train_wan import train_wan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw")
    res = train_wan(root / "model", root / "work", vae=DEFAULT_DIR, max_steps=2, batch=2, save_every=1, layers=2)
    assert res["steps"] == 2
    return root


def test_training_resumes_exactly(wan_model, tmp_path):
    """Two steps, then two more from the saved state, equal four in one go."""
    train_wan(tmp_path / "a", tmp_path / "wa", vae=DEFAULT_DIR, max_steps=4, batch=2, save_every=1, layers=2)
    train_wan(tmp_path / "b", tmp_path / "wb", vae=DEFAULT_DIR, max_steps=2, batch=2, save_every=1, layers=2)
    train_wan(tmp_path / "b", tmp_path / "wb", vae=DEFAULT_DIR, max_steps=4, batch=2, save_every=1, layers=2)
    a, b = (load_model(tmp_path / d)[0].state_dict() for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "a" / "train_log.txt").read_text()
    assert json.loads(log.splitlines()[0][2:])["arch"] == "wan"


def test_the_folder_loads_as_a_wan_model_and_samples(wan_model):
    tr, cond, sched = load_model(wan_model / "model")
    assert family_of(tr) is WanFamily and type(sched).__name__ == "UniPCMultistepScheduler"
    codec = load_codec(wan_model / "model")
    video = sample(tr, cond, sched, [0, 3], steps=3, codec=codec)
    assert video.shape == (2, 8, 3, 32, 32) and np.isfinite(video).all()


def test_the_demo_runs_every_method_through_the_wan_family(wan_model, tmp_path):
    from ditflow_fast.toyworld.demo import run_demo
    from ditflow_fast.toyworld.settings import ROWS, DemoSettings

    res = run_demo(tmp_path, model_dir=wan_model / "model", clips=1, seeds=1, gifs="none", log=lambda *a: None,
                   settings=DemoSettings(steps=3, guided_steps=2, opt_iters=1, guidance_block=1))
    assert [r["row"] for r in res["records"]] == list(ROWS)
    guided = [r for r in res["records"] if r["row"] in ("DiTFlow latent", "DiTFlow emb", "MOFT", "SMM")]
    assert all(r["final_loss"] is not None and np.isfinite(r["final_loss"]) for r in guided)
