"""Hardening: the shared atomic writer (modes, failure, uniqueness), and early, one-line CLI errors."""

from __future__ import annotations

import contextlib
import json
import os
import stat

import numpy as np
import pytest

from ditflow_fast import atomic


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


UMASKS = pytest.mark.parametrize("mask, fmode, dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)],
                                 ids=["umask022", "umask077"])
FRAMES = np.random.default_rng(0).integers(0, 256, size=(3, 8, 10, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------- atomic writer


def test_current_umask_reads_without_changing_it():
    with _umask(0o027):
        assert atomic.current_umask() == 0o027
        assert atomic.current_umask() == 0o027
        assert os.umask(0o027) == 0o027


@UMASKS
def test_atomic_writers_give_the_umask_modes(tmp_path, mask, fmode, dmode):
    with _umask(mask):
        atomic.write_bytes(tmp_path / "a.bin", b"x")
        atomic.write_text(tmp_path / "b.txt", "y")
        atomic.write_json(tmp_path / "c.json", {"k": 1})
        with atomic.atomic_path(tmp_path / "d.safetensors") as tmp:
            tmp.write_bytes(b"z")
        with atomic.atomic_dir(tmp_path / "e") as tmp:
            (tmp / "f.txt").write_text("w")
        atomic.write_text(tmp_path / "new" / "sub" / "g.txt", "v")  # missing folders are created
    for name in ("a.bin", "b.txt", "c.json", "d.safetensors", "e/f.txt", "new/sub/g.txt"):
        assert _mode(tmp_path / name) == fmode, name
    assert _mode(tmp_path / "e") == dmode
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": 1}
    assert (tmp_path / "d.safetensors").read_bytes() == b"z"
    assert _entries(tmp_path) == ["a.bin", "b.txt", "c.json", "d.safetensors", "e", "new"]


def test_a_failing_file_write_leaves_the_destination_and_no_temp(tmp_path):
    dest = tmp_path / "state.safetensors"
    dest.write_bytes(b"old contents")
    os.chmod(dest, 0o640)
    with pytest.raises(RuntimeError, match="writer died"), atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    with pytest.raises(TypeError):
        atomic.write_json(dest, {"x": object()}, default=None)  # unserialisable: fails before any temp
    assert dest.read_bytes() == b"old contents" and _mode(dest) == 0o640
    assert _entries(tmp_path) == ["state.safetensors"]


def test_a_failing_folder_write_leaves_the_old_folder_and_no_temp(tmp_path):
    dest = tmp_path / "frames"
    dest.mkdir()
    (dest / "old.png").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_dir(dest) as tmp:
        (tmp / "new.png").write_bytes(b"new")
        raise RuntimeError("writer died")
    assert _entries(tmp_path) == ["frames"] and _entries(dest) == ["old.png"]
    assert (dest / "old.png").read_bytes() == b"old"
    with atomic.atomic_dir(dest) as tmp:  # a clean write replaces the folder as a whole
        (tmp / "new.png").write_bytes(b"new")
    assert _entries(tmp_path) == ["frames"] and _entries(dest) == ["new.png"]


def test_atomic_dir_refuses_to_replace_a_file(tmp_path):
    dest = tmp_path / "result_frames"
    dest.write_bytes(b"a file")
    with pytest.raises(NotADirectoryError), atomic.atomic_dir(dest):
        pytest.fail("the block must not run")
    assert dest.read_bytes() == b"a file" and _entries(tmp_path) == ["result_frames"]


def test_concurrent_writers_get_their_own_temps(tmp_path):
    dest = tmp_path / "config.json"
    with atomic.atomic_path(dest) as a, atomic.atomic_path(dest) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".config.json.tmp-") and a.suffix == ".json"
        a.write_text("A")
        b.write_text("B")
    assert dest.read_text() == "A"  # the last rename (the outer block exits last) wins
    assert _entries(tmp_path) == ["config.json"]


# ----------------------------------------------------------------------------------- write_video


@UMASKS
def test_write_video_outputs_get_the_umask_modes(tmp_path, mask, fmode, dmode):
    from ditflow_fast.video_io import write_video

    with _umask(mask):
        mp4 = write_video(FRAMES, tmp_path / "result.mp4", fmt="mp4")
        gif = write_video(FRAMES, tmp_path / "result.gif", fmt="gif")
        folder = write_video(FRAMES, tmp_path / "result_frames", fmt="frames")
    assert _mode(mp4) == fmode and _mode(gif) == fmode
    assert _mode(folder) == dmode and {_mode(p) for p in folder.iterdir()} == {fmode}
    assert _entries(tmp_path) == ["result.gif", "result.mp4", "result_frames"]


def test_write_video_failure_leaves_the_old_video_and_no_temp(tmp_path, monkeypatch):
    from ditflow_fast import video_io

    dest = tmp_path / "result.mp4"
    dest.write_bytes(b"the previous result")

    def broken(frames, path, fps):
        path.write_bytes(b"half an mp4")
        raise OSError("disk full")

    monkeypatch.setattr(video_io, "_write_mp4", broken)
    with pytest.raises(OSError, match="disk full"):
        video_io.write_video(FRAMES, dest, fmt="mp4")
    assert dest.read_bytes() == b"the previous result" and _entries(tmp_path) == ["result.mp4"]
