"""The batch driver's bookkeeping without Ray: the manifest (appended, torn lines), reruns of jobs whose
inputs changed (a stand-in for Ray running the driver's loop), the lock, and the reset of a held model."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pytest
import torch

from ditflow_fast.batch import runner
from ditflow_fast.batch.jobs import Job
from ditflow_fast.batch.runner import BatchSettings, Manifest


def test_manifest_appends_one_line_per_record_and_never_rewrites(tmp_path):
    path = tmp_path / "manifest.jsonl"
    m = Manifest(path)
    m.add(event="start", id="a")
    ino, before = os.stat(path).st_ino, path.read_bytes()
    m.add(event="done", id="a", fingerprint="f")
    after = path.read_bytes()
    assert os.stat(path).st_ino == ino  # the same file, grown: not replaced by a rewrite
    assert after.startswith(before) and after[len(before):].count(b"\n") == 1
    assert [json.loads(line)["event"] for line in after.splitlines()] == ["start", "done"]
    assert Manifest(path).latest()["a"]["fingerprint"] == "f"


def test_manifest_skips_a_torn_last_line_and_starts_the_next_record_on_its_own(tmp_path):
    path = tmp_path / "manifest.jsonl"
    Manifest(path).add(event="done", id="a")
    with open(path, "ab") as fh:
        fh.write(b'{"event": "done", "id": "b", "ti')  # a crash mid-write
    m = Manifest(path)
    assert list(m.latest()) == ["a"]
    m.add(event="failed", id="c")
    assert set(Manifest(path).latest()) == {"a", "c"}


class _Ref:
    def __init__(self, result):
        self.result = result


class FakeRay:
    """Just enough of Ray for ``runner._run``: actors run nothing; ``run.remote`` records the call and
    answers with ``self.answer(job_id, options, out)``."""

    class exceptions:  # noqa: N801 - Ray's name
        class RayError(Exception):
            pass

        class RayActorError(RayError):
            pass

        class WorkerCrashedError(RayError):
            pass

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def is_initialized(self):
        return True  # "already connected": _run starts and stops nothing

    def cluster_resources(self):
        return {}

    def remote(self, **_):
        ray = self

        class Actor:
            def __init__(self, name):
                self.run = SimpleNamespace(remote=lambda job_id, options, out, die: ray._run(name, job_id, options,
                                                                                             out))

        class Remote:
            def options(self, **_):
                return self

            def remote(self, name, *_):
                return Actor(name)
        return lambda cls: Remote()

    def _run(self, name, job_id, options, out):
        self.calls.append((job_id, dict(options)))
        return _Ref({"worker": name, "seconds": 0.01, "model": "held", **self.answer(job_id, options, out)})

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.result

    def kill(self, *_, **__):
        pass


def _finish(job_id, options, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump({"options": options}, fh)
    return {"ok": True, "record": {}}


def _refuse(job_id, options, out):  # what transfer says of a finished --out whose video changed
    if options.get("fresh"):
        return _finish(job_id, options, out)
    return {"ok": False, "error": f"ValueError: --out {out}: holds a run with other video; use --fresh to start "
            "over there, or another --out", "traceback": "Traceback ..."}


def test_a_done_job_whose_video_changed_is_run_again_not_skipped(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"first video")
    job = Job("a", 1, {"video": str(video), "prompt": "p"})
    out = tmp_path / "out"
    out.mkdir()  # run_batch's lock makes it
    s = BatchSettings(out=out, progress=False)

    ray = FakeRay(_finish)
    assert runner._run(ray, [job], s, out)["a"]["status"] == "done"
    assert runner._run(ray, [job], s, out)["a"]["status"] == "skipped" and len(ray.calls) == 1

    video.write_bytes(b"another video, longer")  # same path, other contents (size and mtime differ)
    ray = FakeRay(_refuse)
    res = runner._run(ray, [job], s, out)["a"]
    assert ray.calls == [("a", job.options)]  # run again, not fresh: transfer decides
    assert res["status"] == "failed" and "other video" in res["error"] and "--fresh-changed" in res["error"]
    last = Manifest(out / runner.MANIFEST).latest()["a"]
    assert last["stale"] is True and last["inputs"] == runner._inputs_stamp(job)

    # still changed for the batch (its folder holds the first video's run): tried again, not "(earlier run)"
    res = runner._run(ray, [job], s, out)["a"]
    assert len(ray.calls) == 2 and "(earlier run)" not in res["error"]

    # --fresh-changed: started over with fresh=True, then skipped like any finished job
    s.fresh_changed = True
    assert runner._run(ray, [job], s, out)["a"]["status"] == "done"
    assert ray.calls[-1] == ("a", {**job.options, "fresh": True}) and "fresh" not in job.options
    starts = [r for r in Manifest(out / runner.MANIFEST).records if r["event"] == "start"]
    assert starts[-1].get("fresh") is True and not any(r.get("fresh") for r in starts[:-1])
    assert runner._run(ray, [job], s, out)["a"]["status"] == "skipped" and len(ray.calls) == 3


def test_a_done_job_whose_file_was_only_touched_is_run_again_and_resumes(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video")
    job = Job("a", 1, {"video": str(video), "prompt": "p"})
    out = tmp_path / "out"
    out.mkdir()  # run_batch's lock makes it
    s = BatchSettings(out=out, progress=False)
    ray = FakeRay(_finish)
    runner._run(ray, [job], s, out)
    st = os.stat(video)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert runner._run(ray, [job], s, out)["a"]["status"] == "done" and len(ray.calls) == 2
    assert ray.calls[-1][1] == job.options  # the same run key: transfer resumes its finished state


def test_a_done_job_whose_folder_input_was_rewritten_in_place_is_run_again(tmp_path):
    model, frames = tmp_path / "model", tmp_path / "frames"  # a local model folder, a video given as frames
    (model / "transformer").mkdir(parents=True)
    frames.mkdir()
    files = [model / "transformer" / "weights.safetensors", model / "model_index.json", frames / "0001.png"]
    for f in files:
        f.write_bytes(b"first")
    job = Job("a", 1, {"video": str(frames), "model": str(model), "prompt": "p"})
    out = tmp_path / "out"
    out.mkdir()  # run_batch's lock makes it
    s = BatchSettings(out=out, progress=False)
    ray = FakeRay(_finish)
    runner._run(ray, [job], s, out)
    assert runner._run(ray, [job], s, out)["a"]["status"] == "skipped"
    for n, f in enumerate(files, 2):
        folder = os.stat(f.parent)
        with open(f, "r+b") as fh:  # rewritten in place: the folders' own size and time stay as they were
            fh.write(b"other")
        os.utime(f, ns=(folder.st_atime_ns, os.stat(f).st_mtime_ns + 10**9))
        os.utime(f.parent, ns=(folder.st_atime_ns, folder.st_mtime_ns))
        assert runner._run(ray, [job], s, out)["a"]["status"] == "done", f  # not skipped with a stale result
        assert len(ray.calls) == n


def test_batch_lock_names_the_system_error_when_the_folder_cannot_be_locked(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from ditflow_fast import atomic

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    with pytest.raises(ValueError, match=os.strerror(errno.ENOLCK)) as exc:
        runner.run_batch([], BatchSettings(out=tmp_path / "out", progress=False))
    assert "another" not in str(exc.value)
    monkeypatch.undo()
    held = atomic.dir_lock(tmp_path / "out", "x")
    try:
        with pytest.raises(ValueError, match="another ditflow-fast batch is writing into it"):
            runner.run_batch([], BatchSettings(out=tmp_path / "out", progress=False))
    finally:
        os.close(held)


def test_reset_of_a_held_model_removes_the_ffn_chunking_of_the_last_job():
    from ditflow_fast.families.wan import chunking as wan_chunking
    from ditflow_fast.transfer_api import HeldModel

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))

    tr = torch.nn.Module()
    tr.blocks = torch.nn.ModuleList([Block(), Block()])
    assert wan_chunking.install(tr, 3) == 3
    held = HeldModel.__new__(HeldModel)  # no model to load: the components are set here
    from ditflow_fast.families.wan import WanFamily

    # the Wan family's own hooks (its guidance processors: none were installed here)
    held.family = SimpleNamespace(uninstall=lambda t: None, unchunk_ffn=WanFamily.unchunk_ffn)
    held.components = {"transformer": tr, "transformer_2": None, "vae": None}
    held.reset()
    assert wan_chunking.installed_chunks(tr) == 1
    assert all("forward" not in b.ffn.__dict__ for b in tr.blocks)
