"""A reduced ``ditflow-fast demo`` end to end: every row through the real guidance loop, on the tiny DiT."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from ditflow_fast.toyworld.demo import ToyTransfer, other_condition  # noqa: E402
from ditflow_fast.toyworld.model import DEFAULT_DIR, ConditionEmbedding, build_transformer, save_model  # noqa: E402
from ditflow_fast.toyworld.settings import ROWS, DemoSettings  # noqa: E402
from ditflow_fast.toyworld.world import condition_parts, reference_clips  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The committed weights when present, else a random pixel model of the same depth (the demo guides block 3)."""
    if (DEFAULT_DIR / "transformer" / "config.json").is_file():
        return DEFAULT_DIR
    return save_model(tmp_path_factory.mktemp("m"), build_transformer(), ConditionEmbedding())


def test_other_condition_changes_kind_and_colour():
    for c in range(12):
        k, col = condition_parts(c)
        for shift in (1, 2):
            k2, col2 = condition_parts(other_condition(c, shift))
            assert k2 != k and col2 != col
        assert other_condition(c, 1) != other_condition(c, 2)


def test_cli_quick_demo_runs_every_row(tmp_path, model_dir):
    from ditflow_fast.cli.main import main

    out = tmp_path / "demo"
    rc = main(["demo", "--model", str(model_dir), "--out", str(out), "--clips", "1", "--seeds", "1",
               "--steps", "4", "--guided-steps", "2", "--opt-iters", "1", "--threads", "1"])
    assert rc == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["row"] for r in rows] == list(ROWS)
    for r in rows:
        assert -1.0 <= float(r["motion_fidelity"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == set(ROWS)
    assert summary["meta"]["family"] == "cogvideox" and summary["meta"]["threads"] == 1
    md = (out / "summary.md").read_text()
    assert f"{model_dir.name} (cogvideox)" in md.splitlines()[0] and ", 1 thread," in md.splitlines()[0]
    assert all(f"| {row} |" in md for row in ROWS)
    assert (out / "videos" / "clip0_seed0_side_by_side.gif").is_file()
    assert (out / "side_by_side_clip0_seed0.png").is_file()
    assert len(list((out / "videos").glob("*.gif"))) == len(ROWS) + 1
    # guided rows report their optimisation loss; unguided ones have none
    losses = {r["row"]: r["final_loss"] for r in rows}
    assert losses["no guidance"] == "" and losses["KV injection only"] == "" and losses["zero-shot"] == ""
    assert all(float(losses[r]) >= 0 for r in ("DiTFlow latent", "DiTFlow emb", "MOFT", "SMM"))


def test_rows_change_the_generation(model_dir):
    tt = ToyTransfer(model_dir, DemoSettings(steps=4, guided_steps=2, opt_iters=2))
    ref = reference_clips(0, 1)[0]
    target = other_condition(ref.condition)
    plain, _ = tt.generate(ref, target, "no guidance", seed=0)
    again, _ = tt.generate(ref, target, "no guidance", seed=0)
    np.testing.assert_array_equal(plain, again)  # same seed, same noise: deterministic
    for row in ("KV injection only", "DiTFlow latent", "MOFT", "SMM"):
        video, losses = tt.generate(ref, target, row, seed=0)
        assert video.shape == ref.video.shape
        assert np.abs(video - plain).max() > 1e-4, row
        assert (len(losses) == 2) == (row != "KV injection only")


def test_demo_argument_errors(tmp_path, model_dir):
    from ditflow_fast.cli.main import main
    from ditflow_fast.toyworld.demo import run_demo

    with pytest.raises(SystemExit):
        main(["demo", "--rows", "no guidance,warp drive"])
    with pytest.raises(ValueError, match="DiTFlow emb"):
        run_demo(tmp_path, model_dir=model_dir, rows=["zero-shot"])
    with pytest.raises(ValueError, match="row must be one of"):
        ToyTransfer(model_dir).generate(reference_clips(0, 1)[0], 0, "teleport", 0)


def test_user_clip_as_reference(tmp_path, model_dir, capsys):
    from ditflow_fast.cli.main import main
    from ditflow_fast.toyworld.media import to_uint8
    from ditflow_fast.toyworld.world import COLOURS, condition_index, make_clip
    from ditflow_fast.video_io import write_video

    clip = make_clip(np.random.default_rng(4), condition=condition_index("disk", "red"), velocity=(1.5, 0.5))
    frames = tmp_path / "frames"
    write_video(to_uint8(clip.video, scale=1), frames, fmt="frames")
    out = tmp_path / "demo"
    rgb = ",".join(str(x) for x in COLOURS["red"])
    assert main(["demo", "--model", str(model_dir), "--video", str(frames), "--ref-colour", rgb, "--target",
                 "blue square", "--out", str(out), "--seeds", "1", "--rows", "no guidance,DiTFlow latent",
                 "--steps", "3", "--guided-steps", "1", "--opt-iters", "1", "--gifs", "none"]) == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["generated"] for r in rows] == ["blue square"] * 2 and rows[0]["reference"] == "user clip"
    assert all(np.isfinite(float(r["motion_fidelity"])) for r in rows)
    # argument errors exit 2 with one line naming the option, as transfer's do
    assert main(["demo", "--model", str(model_dir), "--target", "purple blob", "--out", str(out)]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["demo", "--model", str(model_dir), "--video", str(frames), "--out", str(out)]) == 2
    assert "needs a target condition" in capsys.readouterr().err


def test_default_out_depends_on_the_model(capsys):
    """The bundled CogVideoX model keeps ``ditflow_demo`` (make demo, the docs); another model gets its own
    folder, so its demo never overwrites the default one's; --help says so."""
    from ditflow_fast.cli.main import main
    from ditflow_fast.toyworld.cli import default_out

    assert default_out(None) == default_out(str(DEFAULT_DIR)) == "ditflow_demo"
    assert default_out("assets/tiny_wan") == default_out("assets/tiny_wan/") == "ditflow_demo_tiny_wan"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "default: ditflow_demo " in helptext and "ditflow_demo_tiny_wan" in helptext


def test_summary_header_names_the_model():
    from ditflow_fast.toyworld.demo import summary_markdown

    meta = dict(model="/x/assets/tiny_wan", family="wan", clips=5, seeds=3, clip_seed=2, threads=1,
                settings={}, seconds=1.0)
    header = summary_markdown({}, meta).splitlines()[0]
    assert "tiny_wan (wan)" in header and "5 reference clips x 3 seeds" in header and "1 thread" in header


def test_rerun_removes_its_own_stale_outputs_only(tmp_path, model_dir):
    """A second demo into the same folder leaves nothing of the first looking current (its viewers and GIFs
    of rows it no longer runs), but keeps every file the demo did not write."""
    from ditflow_fast.toyworld.demo import run_demo

    out, s = tmp_path / "demo", DemoSettings(steps=2, guided_steps=1, opt_iters=1)
    run_demo(out, model_dir=model_dir, clips=1, seeds=1, rows=["no guidance", "DiTFlow latent"], settings=s,
             log=lambda *a: None)
    assert (out / "viewers" / "DiTFlow_latent").is_dir() and (out / "videos" / "DiTFlow_latent.gif").is_file()
    mine = [out / "notes.txt", out / "videos" / "mine.gif", out / "viewers" / "DiTFlow_latent" / "keep.txt"]
    for p in mine:
        p.write_text("the user's")
    run_demo(out, model_dir=model_dir, clips=1, seeds=1, rows=["no guidance"], settings=s, gifs="none",
             log=lambda *a: None)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted([*(str(p.relative_to(out)) for p in mine), "demo_outputs.txt", "results.csv",
                           "summary.json", "summary.md"]), left
