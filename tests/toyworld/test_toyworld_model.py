"""The tiny DiT: training steps, resume, save/load round trip, sampling, and the committed weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from ditflow_fast.toyworld.model import DEFAULT_DIR, build_transformer, load_model, rope, world_geometry  # noqa: E402
from ditflow_fast.toyworld.sample import sample  # noqa: E402
from ditflow_fast.toyworld.train import draw_timesteps, learning_rate, object_weighted_mse, train, training_batch  # noqa: E402
from ditflow_fast.toyworld.world import NULL_CONDITION  # noqa: E402


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_training_batch_is_a_function_of_seed_and_step():
    a, ca = training_batch(3, 7, 4)
    b, cb = training_batch(3, 7, 4)
    c, _ = training_batch(3, 8, 4)
    assert torch.equal(a, b) and torch.equal(ca, cb) and not torch.equal(a, c)
    assert a.shape == (4, 8, 3, 32, 32) and -1 <= a.min() and a.max() <= 1
    _, conds = training_batch(0, 0, 400)
    assert 0 < (conds == NULL_CONDITION).float().mean() < 0.25  # condition dropout happens, not too often
    a2, ca2, alpha = training_batch(3, 7, 4, with_alpha=True)  # the coverage rides along without changing the clips
    assert torch.equal(a, a2) and torch.equal(ca, ca2) and alpha.shape == (4, 8, 32, 32)


def test_object_weighted_loss():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 3, 4, 4, generator=g), torch.randn(2, 3, 3, 4, 4, generator=g)
    alpha = torch.zeros(2, 3, 4, 4)
    mse = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(object_weighted_mse(pred, target, alpha, 4.0), mse)  # no object: the plain loss
    torch.testing.assert_close(object_weighted_mse(pred, target, alpha + 1, 4.0), mse)  # all object: also
    alpha[0, 1, 2, 3] = 1.0  # one pixel of the object: its error counts 5 times, the total is renormalised
    err = (pred - target) ** 2
    w = torch.ones_like(err)
    w[0, 1, :, 2, 3] = 5.0
    torch.testing.assert_close(object_weighted_mse(pred, target, alpha, 4.0), (err * w).sum() / w.sum())
    with pytest.raises(ValueError, match="object_weight"):
        train("unused", "unused", max_steps=0, object_weight=-1.0)


def test_learning_rate_schedule():
    # warm-up, constant, cosine decay, then the final value: a pure function of the step
    kw = dict(warmup=4, lr_final=1e-4, anneal_start=10, anneal_end=20)
    assert learning_rate(0, 1e-3, **kw) == pytest.approx(2.5e-4)
    assert learning_rate(3, 1e-3, **kw) == learning_rate(9, 1e-3, **kw) == pytest.approx(1e-3)
    assert learning_rate(15, 1e-3, **kw) == pytest.approx(5.5e-4)  # half way: the mean of the two
    assert learning_rate(20, 1e-3, **kw) == learning_rate(10**6, 1e-3, **kw) == pytest.approx(1e-4)
    lrs = [learning_rate(s, 1e-3, **kw) for s in range(10, 21)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert learning_rate(15, 1e-3, warmup=4) == pytest.approx(1e-3)  # no lr_final: constant after warm-up
    with pytest.raises(ValueError, match="anneal_start"):
        train("unused", "unused", max_steps=0, lr_final=1e-4, anneal_start=5, anneal_end=5)


@pytest.mark.parametrize("anneal", [{}, dict(lr_final=1e-5, anneal_start=1, anneal_end=3)], ids=["constant", "cosine"])
def test_resume_equals_uninterrupted_run(tmp_path, anneal):
    kw = dict(batch=2, warmup=2, save_every=2, log_every=1, threads=1, **anneal)
    full = train(tmp_path / "a", tmp_path / "wa", max_steps=4, **kw)
    train(tmp_path / "b", tmp_path / "wb", max_steps=2, **kw)
    resumed = train(tmp_path / "b", tmp_path / "wb", max_steps=4, **kw)
    assert full["steps"] == resumed["steps"] == 4
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    log = (tmp_path / "b" / "train_log.txt").read_text().splitlines()
    rows = [line.split() for line in log if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    assert [float(r[3]) for r in rows] == pytest.approx([learning_rate(s, 1e-3, warmup=2, **anneal) for s in range(4)],
                                                        rel=1e-2)  # the log holds the lr each step used
    assert any(line.startswith("# resumed at step 2") for line in log)
    world = json.loads((tmp_path / "b" / "world.json").read_text())
    assert world["train"]["steps"] == 4 and world["frames"] == 8
    assert world["train"].get("lr_final") == anneal.get("lr_final")
    # the saved folder loads with diffusers' from_pretrained and samples
    tr, ce, sc = load_model(tmp_path / "b")
    v = sample(tr, ce, sc, [0, 5], steps=2, seed=1)
    assert v.shape == (2, 8, 3, 32, 32) and 0 <= v.min() and v.max() <= 1
    v1 = sample(tr, ce, sc, [5], steps=2, seed=2)
    np.testing.assert_allclose(v[1], v1[0], atol=1e-5)  # video i uses seed + i
    # a guidance interval above every timestep is plain conditional sampling; inside the schedule it
    # guides only the noisier steps (2 trailing steps: t = 999 guided, t = 499 not)
    plain = sample(tr, ce, sc, [0, 5], steps=2, seed=1, cfg=1.0)
    np.testing.assert_array_equal(sample(tr, ce, sc, [0, 5], steps=2, seed=1, cfg_min_t=1000), plain)
    interval = sample(tr, ce, sc, [0, 5], steps=2, seed=1, cfg_min_t=600)
    assert not np.array_equal(interval, plain) and not np.array_equal(interval, v)


def test_model_size_options(tmp_path):
    train(tmp_path / "m", tmp_path / "w", max_steps=1, batch=1, heads=1, layers=2, threads=1)
    cfg = json.loads((tmp_path / "m" / "transformer" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_layers"], cfg["time_embed_dim"]) == (1, 2, 32)
    assert json.loads((tmp_path / "m" / "world.json").read_text())["train"]["heads"] == 1
    assert load_model(tmp_path / "m")[0].config.num_layers == 2
    meta_path = tmp_path / "m" / "world.json"
    meta = json.loads(meta_path.read_text())
    assert {k: meta[k] for k in world_geometry()} == world_geometry()
    meta_path.write_text(json.dumps({**meta, "radius": meta["radius"] + 2}))
    with pytest.warns(UserWarning, match="another world.*radius"):  # trained on other clips: said, not refused
        load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="heads and layers"):
        train(tmp_path / "m", tmp_path / "w", max_steps=0, layers=0)
    with pytest.raises(ValueError, match="another size"):  # resuming with another size names the options
        train(tmp_path / "m", tmp_path / "w", max_steps=2, batch=1, heads=2, layers=2, threads=1)
    from safetensors.torch import load_file, save_file

    state_path = tmp_path / "w" / "state.safetensors"
    state = load_file(str(state_path))
    other = {**world_geometry(), "radius": world_geometry()["radius"] + 2}
    for metadata, match in (({"world": json.dumps(other)}, "another world"), (None, "does not record")):
        save_file(state, str(state_path), metadata=metadata)  # a state of other clips is not resumed
        with pytest.raises(ValueError, match=match):
            train(tmp_path / "m", tmp_path / "w", max_steps=2, batch=1, heads=1, layers=2, threads=1)


def test_rope_and_loading_errors(tmp_path):
    tr = build_transformer(num_layers=1)
    cos, sin = rope(tr)
    assert cos.shape == sin.shape == (8 * 64, tr.config.attention_head_dim)
    with pytest.raises(ValueError, match="32x32"):
        rope(tr, height=48)
    with pytest.raises(FileNotFoundError, match="train_tiny_dit"):
        load_model(tmp_path)


@pytest.mark.skipif(not (DEFAULT_DIR / "transformer" / "config.json").is_file(), reason="weights not committed")
def test_committed_weights_are_small_and_trained():
    files = [p for p in DEFAULT_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 8 * 2**20
    meta = json.loads((DEFAULT_DIR / "world.json").read_text())
    assert meta["train"]["steps"] >= 1000
    assert {k: meta.get(k) for k in world_geometry()} == world_geometry()  # trained on the package's world
    log = [line.split() for line in (DEFAULT_DIR / "train_log.txt").read_text().splitlines() if line[0] != "#"]
    assert float(log[-1][2]) < 0.5 * float(log[0][2])  # the loss came down


def test_amf_errors_per_block():
    from ditflow_fast.toyworld.diagnostics import amf_errors
    from ditflow_fast.toyworld.model import ConditionEmbedding
    from ditflow_fast.toyworld.world import reference_clips

    tr = build_transformer(num_layers=2).eval()
    errs = amf_errors(tr, ConditionEmbedding(), reference_clips(0, 1))
    assert errs.shape == (2,) and np.isfinite(errs).all() and (errs >= 0).all()
    # the processors are put back: the transformer has no guidance state left on it
    assert getattr(tr, "_ditflow_guidance", None) is None


def test_denoise_quality_probe():
    from ditflow_fast.toyworld.model import ConditionEmbedding, build_scheduler
    from ditflow_fast.toyworld.quality import denoise_quality
    from ditflow_fast.toyworld.world import reference_clips

    tr = build_transformer(num_layers=1).eval()
    rows = denoise_quality(tr, ConditionEmbedding(), build_scheduler(), reference_clips(0, 2), [0, 500])
    assert [r["t"] for r in rows] == [0, 500] and rows[0]["snr"] > rows[1]["snr"] > 0
    assert rows[0]["input_iou"] > 0.8  # barely noised clips still show their shapes
    assert rows[1]["input_iou"] < rows[0]["input_iou"]
    assert all(np.isfinite(r["x0_mse"]) and 0 <= r["iou"] <= 1 for r in rows)
    with pytest.raises(ValueError, match="timesteps"):
        denoise_quality(tr, ConditionEmbedding(), build_scheduler(), reference_clips(0, 1), [1000])


def test_timestep_density():
    uniform = draw_timesteps(torch.Generator().manual_seed(1), 8, 1000)
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)))
    t = draw_timesteps(torch.Generator().manual_seed(2), 100_000, 1000, t_power=2.0).double()
    assert 0 <= t.min() and t.max() <= 999
    assert t.mean() / 1000 == pytest.approx(2 / 3, abs=0.01)  # density ~ t: mean 2/3 of the range
    assert (t < 500).double().mean() == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="t_power"):
        train("unused", "unused", max_steps=0, t_power=0.0)
