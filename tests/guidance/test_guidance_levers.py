"""The guidance loop's speed levers: gradient reuse and early stopping (what they run, what they cost)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from _transfer_helpers import tiny_guide  # noqa: E402

from ditflow_fast.guidance.config import GuidanceConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(**kw):
    return tiny_guide(**{"opt_iters": 5, **kw}).run(progress=False)


def test_default_runs_one_pass_per_iteration():
    res = _run()
    assert res.passes == 2 * 5
    assert [len(h) for h in res.losses.values()] == [5, 5]


def test_gradient_reuse_runs_every_kth_pass_and_still_moves_the_latent():
    res = _run(grad_reuse=3)
    assert res.passes == 2 * 2  # iterations 0 and 3 of 5
    assert [len(h) for h in res.losses.values()] == [2, 2]
    # the reused gradient takes real Adam steps: the result differs from stopping after the passes alone
    fewer = _run(opt_iters=2)
    assert fewer.passes == res.passes and not torch.equal(res.latents, fewer.latents)
    # and the first pass of each step sees the same latent as without reuse (same start, same first loss)
    plain = _run()
    first_t = max(plain.losses)
    assert res.losses[first_t][0] == pytest.approx(plain.losses[first_t][0], rel=1e-6)


def test_early_stop_ends_a_step_when_the_loss_stops_falling():
    # tolerance 0.99: no pass can fall by 99 %, so each step stops after its second pass
    res = _run(early_stop=0.99)
    assert res.passes == 2 * 2 and [len(h) for h in res.losses.values()] == [2, 2]
    # a tolerance no fall can miss never triggers... unless the loss rises (then it stops too)
    tiny_tol = _run(early_stop=1e-12)
    for hist in tiny_tol.losses.values():
        falls = [a - b for a, b in zip(hist, hist[1:], strict=False)]
        assert all(f >= 1e-12 * abs(a) for f, a in zip(falls[:-1], hist, strict=False))  # it went on only while falling
        assert len(hist) == 5 or falls[-1] < 1e-12 * abs(hist[-2])


def test_levers_off_keep_the_run_key_of_earlier_states():
    base = GuidanceConfig(model="m")
    assert GuidanceConfig(model="m", grad_reuse=1, early_stop=0.0).run_key() == base.run_key()
    assert GuidanceConfig(model="m", grad_reuse=3).run_key() != base.run_key()
    assert GuidanceConfig(model="m", early_stop=0.05).run_key() != base.run_key()


@pytest.mark.parametrize("field,value,needle", [
    ("grad_reuse", 0, "grad_reuse"), ("grad_reuse", 1.5, "grad_reuse"), ("grad_reuse", True, "grad_reuse"),
    ("early_stop", 1.0, "early_stop"), ("early_stop", -0.1, "early_stop"),
])
def test_bad_lever_values_are_refused_by_name(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        GuidanceConfig(model="m", **{field: value}).validate()


@pytest.mark.parametrize("args,needle", [(["--grad-reuse", "0"], "--grad-reuse"), (["--early-stop", "1.5"],
                                                                                   "--early-stop")])
def test_transfer_refuses_bad_levers_before_loading(tmp_path, capsys, args, needle):
    from ditflow_fast.cli.main import main

    out = tmp_path / "out"
    assert main(["transfer", "--video", str(tmp_path / "none.mp4"), "--prompt", "x", "--model",
                 str(tmp_path / "no_model"), "--out", str(out), *args]) == 2
    assert needle in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("mode,warned", [("emb", True), ("latent", False)])
def test_transfer_warns_about_gradient_reuse_in_emb_mode(capsys, mode, warned):
    from pathlib import Path

    from ditflow_fast.cli.main import main

    model = Path(__file__).resolve().parents[2] / "assets" / "tiny_dit"
    assert main(["transfer", "--model", str(model), "--opt-mode", mode, "--grad-reuse", "3", "--dry-run"]) == 0
    assert ("--grad-reuse with --opt-mode emb" in capsys.readouterr().err) is warned
