"""JOBS.jsonl checks (no Ray needed) and the reference cache of ``transfer --ref-cache``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from ditflow_fast.batch.jobs import JobsError, parse_jobs  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.guidance.ref_cache import RefCache, tensor_digest  # noqa: E402
from ditflow_fast.video_io import read_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_bad_line_is_reported_with_its_number_before_anything_runs(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "seeed": 1}\n[1]\n\n{"frames": "x"}\n{oops\n{"opt_mode": "nope"}\n'
                    '{"id": "../x"}\n{"out": "elsewhere"}\n{"id": "ok"}\n{"id": "ok"}\n{"guidance_block": [1, 2]}\n')
    with pytest.raises(JobsError) as err:
        parse_jobs(jobs, {"video": "v.mp4", "prompt": "p"})
    lines = [n for n, _ in err.value.problems]
    assert lines == [1, 2, 4, 5, 6, 7, 8, 10]
    text = str(err.value)
    assert "unknown key 'seeed' (did you mean 'seed'?)" in text and "invalid int value: 'x'" in text
    assert "invalid choice: 'nope'" in text and "already the id of line 9" in text and "set by the batch" in text
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--video", "v.mp4", "--prompt", "p"]) == 2
    assert "jobs.jsonl:5: not valid JSON" in capsys.readouterr().err and not out.exists()


def test_job_options_are_the_command_line_defaults_overridden_by_the_line(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a dog", "seed": 3, "no_injection": true, "guidance_block": [1, 2]}\n'
                    '{"id": "second", "video": "other.mp4", "prompt": "a cat"}\n')
    a, b = parse_jobs(jobs, {"video": "v.mp4", "frames": 9, "model": "owner/name"})
    assert (a.id, b.id) == ("job-1", "second")
    assert "--seed=3" in a.argv and "--no-injection" in a.argv and "--frames=9" in b.argv
    assert a.argv.count("--guidance-block") == 2 and a.model_key == b.model_key == ("owner/name", "")
    assert a.options["video"].endswith("/v.mp4") and a.options["video"].startswith("/")  # made absolute
    with pytest.raises(JobsError, match="no 'prompt'"):
        jobs.write_text('{"video": "v.mp4"}\n')
        parse_jobs(jobs)


@pytest.mark.parametrize("job_id", ["nl\n", "a\nb", "-x", ".x", "a/b", "manifest.jsonl", ""])
def test_an_id_that_is_not_a_plain_folder_name_is_refused_whole(tmp_path, job_id):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": job_id}) + "\n")
    with pytest.raises(JobsError, match="'id' must be a folder name") as err:
        parse_jobs(jobs, {"video": "v.mp4", "prompt": "p"})
    assert err.value.problems[0][0] == 1


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cache")
    tiny.main([str(root)])
    return root


def _args(assets, out, *extra):
    return ["transfer", "--model", str(assets / "model"), "--video", str(assets / "video.mp4"),
            "--prompt-embeds", str(assets / "model" / "prompt_embeds.safetensors"), "--frames", "9",
            "--height", "48", "--width", "64", "--steps", "4", "--guided-steps", "2", "--opt-iters", "2",
            "--out", str(out), "--quiet", "--format", "frames", *extra]


def test_ref_cache_is_reused_never_trusted_under_another_key_and_changes_nothing(assets, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = tmp_path / "cache"
    assert main(_args(assets, tmp_path / "plain")) == 0
    assert main(_args(assets, tmp_path / "first", "--ref-cache", str(cache))) == 0
    assert main(_args(assets, tmp_path / "second", "--ref-cache", str(cache))) == 0
    rec = [json.loads((tmp_path / d / "config.json").read_text())["ref_cache"] for d in ("first", "second")]
    assert [e["hit"] for e in rec[0]["events"]] == [False, False] and rec[1]["hits"] == 2
    plain = read_video(tmp_path / "plain" / "result_frames")
    for d in ("first", "second"):
        assert np.array_equal(read_video(tmp_path / d / "result_frames"), plain)
    files = sorted(cache.glob("*.safetensors"))
    assert [f.name.split("-")[0] for f in files] == ["latent", "targets"]
    # a file whose stored key differs from the one asked for (a copy, an edit, a collision): not used
    lat = files[0]
    with safe_open(str(lat), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file({"latent": torch.zeros_like(t["latent"])}, str(lat), metadata={"key": meta["key"].replace("9", "8")})
    files[1].write_bytes(b"damaged")
    assert main(_args(assets, tmp_path / "third", "--ref-cache", str(cache))) == 0
    rec = json.loads((tmp_path / "third" / "config.json").read_text())["ref_cache"]
    assert rec["misses"] == 2
    assert np.array_equal(read_video(tmp_path / "third" / "result_frames"), plain)
    with safe_open(str(lat), framework="pt") as f:  # recomputed and replaced
        assert f.metadata()["key"] == meta["key"] and torch.equal(f.get_tensor("latent"), t["latent"])
    # another seed samples another latent: another key
    assert main(_args(assets, tmp_path / "seed1", "--ref-cache", str(cache), "--seed", "1")) == 0
    assert len(list(cache.glob("latent-*"))) == 2
    assert not list(cache.glob(".*")), "no temporary files left behind"


def test_ref_cache_keys_name_their_inputs(tmp_path):
    c = RefCache(tmp_path, model="m1")
    k1, full = c.key("latent", {"video": "v", "seed": 0})
    assert json.loads(full)["model"] == "m1" and k1 != RefCache(tmp_path, model="m2").key("latent",
                                                                                           {"video": "v", "seed": 0})[0]
    assert k1 != c.key("latent", {"video": "v", "seed": 1})[0]
    calls = []
    got = c.get("latent", {"video": "v"}, lambda: calls.append(1) or {"latent": torch.ones(2)})
    again = c.get("latent", {"video": "v"}, lambda: calls.append(1) or {"latent": torch.zeros(2)})
    assert calls == [1] and torch.equal(got["latent"], again["latent"])
    assert tensor_digest(torch.ones(2, dtype=torch.bfloat16)) != tensor_digest(torch.ones(2))
