"""Hardening: the shared atomic writer (modes, failure, uniqueness), and early, one-line CLI errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat

import numpy as np
import pytest

from ditflow_fast import atomic
from ditflow_fast.cli.main import main


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


def test_check_writable_probes_and_leaves_nothing(tmp_path):
    atomic.check_writable(tmp_path / "a" / "b" / "bench.jsonl", option="--out")  # missing folders: creatable
    atomic.check_writable(tmp_path / "a" / "b", option="--out", folder=True)
    (tmp_path / "f").write_bytes(b"kept")
    atomic.check_writable(tmp_path / "f", option="--out")  # an existing file opens for appending, unchanged
    assert _entries(tmp_path) == ["f"] and (tmp_path / "f").read_bytes() == b"kept"
    with pytest.raises(ValueError, match=r"^--out .*: exists and is not a folder$"):
        atomic.check_writable(tmp_path / "f", option="--out", folder=True)
    with pytest.raises(ValueError, match=r"^--out .*: is a folder, not a file$"):
        atomic.check_writable(tmp_path, option="--out")
    with pytest.raises(ValueError, match=r"^--out .*f is not a folder$"):
        atomic.check_writable(tmp_path / "f" / "x.jsonl", option="--out")


# ----------------------------------------------------------------------------------- early CLI errors


def _one_line_error(capsys, command: str, option: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"ditflow-fast {command}: error: {option}"), err
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def no_bench(monkeypatch):
    """Fail the test if the benchmark itself starts: every error must come before it."""
    from ditflow_fast.bench import runner

    def run_bench(*a, **k):
        pytest.fail("run_bench was called: the error came after the expensive work started")

    monkeypatch.setattr(runner, "run_bench", run_bench)


def _erofs(*a, **k):
    raise OSError(errno.EROFS, "Read-only file system")


BENCH = ["bench", "--preset", "smoke", "--no-memory", "--repeats", "1", "--warmup", "0"]


def _eacces(*a, **k):
    raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize("case", ["a folder", "under a file", "read-only fs", "unwritable file"])
def test_bench_unusable_out_fails_before_benchmarking(tmp_path, capsys, monkeypatch, no_bench, case):
    (tmp_path / "file").write_bytes(b"")
    out = {"a folder": tmp_path, "under a file": tmp_path / "file" / "bench.jsonl",
           "read-only fs": tmp_path / "results" / "bench.jsonl", "unwritable file": tmp_path / "file"}[case]
    # What the OS says on a read-only mount or for a file without write permission; neither can be
    # made for real here (no mount rights; root ignores permission bits), so the call is stood in for.
    if case == "read-only fs":
        monkeypatch.setattr(atomic.tempfile, "mkstemp", _erofs)
    if case == "unwritable file":
        monkeypatch.setattr(atomic, "open", _eacces, raising=False)
    assert main([*BENCH, "--out", str(out)]) == 2
    err = _one_line_error(capsys, "bench", "--out")
    why = {"a folder": "is a folder", "under a file": "is not a folder", "read-only fs": "Read-only",
           "unwritable file": "cannot write to it (Permission denied)"}
    assert why[case] in err
    assert _entries(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_bench_unwritable_out_fails_before_benchmarking(tmp_path, capsys, no_bench):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    (tmp_path / "ro.jsonl").write_text("")
    os.chmod(tmp_path / "ro.jsonl", 0o444)
    for out in (locked / "bench.jsonl", tmp_path / "ro.jsonl"):
        assert main([*BENCH, "--out", str(out)]) == 2
        assert "Permission denied" in _one_line_error(capsys, "bench", "--out")


def test_bench_usable_out_in_a_missing_folder_reaches_the_run(tmp_path, monkeypatch):
    from ditflow_fast.bench import runner

    def run_bench(*a, **k):
        raise KeyboardInterrupt("reached run_bench")

    monkeypatch.setattr(runner, "run_bench", run_bench)
    with pytest.raises(KeyboardInterrupt, match="reached"):
        main([*BENCH, "--out", str(tmp_path / "new" / "bench.jsonl")])
    assert _entries(tmp_path) == []  # the probe created nothing; the folder is made when the record is appended


@pytest.mark.parametrize("args, option", [
    (["--modes", ","], "--modes names nothing"),
    (["--modes", " , "], "--modes names nothing"),
    (["--backends", ","], "--backends names nothing"),
    (["--mem-limit", "-1"], "--mem-limit must be >= 0"),
])
def test_bench_bad_arguments_fail_before_benchmarking(tmp_path, capsys, no_bench, args, option):
    assert main([*BENCH, *args, "--out", str(tmp_path / "b.jsonl")]) == 2
    _one_line_error(capsys, "bench", option)


@pytest.fixture
def no_demo(monkeypatch):
    from ditflow_fast.toyworld import demo

    def fail(*a, **k):
        pytest.fail("the demo started: the error came after the expensive work started")

    monkeypatch.setattr(demo, "run_demo", fail)
    monkeypatch.setattr(demo, "user_clip", fail)


@pytest.mark.parametrize("args, option", [
    (["--threads", "0"], "--threads must be positive"),
    (["--threads", "-2"], "--threads must be positive"),
    (["--clips", "0"], "--clips must be positive"),
    (["--opt-iters", "0"], "--opt-iters must be positive"),
    (["--grad-reuse", "0"], "--grad-reuse must be >= 1"),
    (["--early-stop", "1"], "--early-stop must lie in"),
    (["--target", "purple blob"], "--target must be '<colour> <kind>'"),
    (["--target", "red"], "--target must be '<colour> <kind>'"),
    (["--video", "clip.mp4"], "--target is needed with --video"),
    (["--video", "clip.mp4", "--target", "red disk", "--ref-colour", "1,2"], "--ref-colour must be R,G,B"),
    (["--video", "clip.mp4", "--target", "red disk", "--ref-colour", "a,b,c"], "--ref-colour must be R,G,B"),
    (["--ref-colour", "1,0,0"], "--ref-colour is only used with --video"),
    (["--model", "no/such/model"], "--model no/such/model: no such folder"),
])
def test_demo_bad_arguments_exit_2_before_running(tmp_path, capsys, no_demo, args, option):
    assert main(["demo", "--out", str(tmp_path / "demo"), *args]) == 2
    _one_line_error(capsys, "demo", option)
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only fs"])
def test_demo_unusable_out_fails_before_running(tmp_path, capsys, monkeypatch, no_demo, case):
    (tmp_path / "file").write_bytes(b"")
    out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "demo",
           "read-only fs": tmp_path / "d"}[case]
    if case == "read-only fs":
        monkeypatch.setattr(atomic.tempfile, "mkstemp", _erofs)
    assert main(["demo", "--out", str(out)]) == 2
    err = _one_line_error(capsys, "demo", "--out")
    why = {"a file": "exists and is not a folder", "under a file": "is not a folder", "read-only fs": "Read-only"}
    assert why[case] in err
    assert _entries(tmp_path) == ["file"]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    usage, listing = out.split("positional arguments:", 1)
    for name in ("info", "amf", "bench", "demo", "transfer"):
        assert name in usage.split("\n\n", 1)[1]  # the description names it
        (line,) = [ln for ln in listing.splitlines() if ln.strip().startswith(name + " ")]
        assert len(line.split()) > 1, line  # with a help text


def test_info_says_what_auto_tries_first(capsys):
    import torch

    from ditflow_fast.api import choose_backend

    assert main(["info"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("auto tries: ")]
    order, first = line.removeprefix("auto tries: ").split("; first available: ")
    assert order.startswith("triton") and order.index(", cpu") < order.index(", torch")  # by rank
    assert not re.search(r"(^|, )(reference|cuda)( |,|$)", order)  # auto never picks them
    q = torch.randn(1, 2, 2 * 3 * 4, 8)
    picked = choose_backend(q, q, frames=2, height=3, width=4).name
    assert (first if not torch.cuda.is_available() else first.split(", ")[-1].split(" (")[0]) == picked


def test_dir_lock_refuses_a_held_folder_and_names_other_errors(tmp_path, monkeypatch):
    out = tmp_path / "a" / "out"
    fd = atomic.dir_lock(out, "ditflow-fast thing")  # created with its parents, no lock file in it
    try:
        assert out.is_dir() and not any(out.iterdir())
        with pytest.raises(ValueError, match=r"^--out .*out: another ditflow-fast thing is writing into it; wait"):
            atomic.dir_lock(out, "ditflow-fast thing")  # another descriptor: refused, not blocked
    finally:
        os.close(fd)
    os.close(atomic.dir_lock(out, "ditflow-fast thing", option="--cache"))  # free again once closed

    def fail(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(atomic.fcntl, "flock", fail)
    with pytest.raises(ValueError, match="cannot be locked") as exc:
        atomic.dir_lock(out, "ditflow-fast thing", option="--cache")
    assert str(exc.value).startswith("--cache ") and os.strerror(errno.ENOLCK) in str(exc.value)
    assert "another" not in str(exc.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file/sub: cannot be opened to lock it \(Not a directory\)"):
        atomic.dir_lock(tmp_path / "file" / "sub", "ditflow-fast thing")


def test_append_line_adds_whole_lines_even_after_a_torn_one(tmp_path):
    from ditflow_fast.atomic import append_line

    log = tmp_path / "sub" / "log.jsonl"
    append_line(log, '{"a": 1}')
    with open(log, "a") as fh:
        fh.write('{"torn": ')  # a crash mid-write
    append_line(log, '{"b": 2}\n')
    assert log.read_text().split("\n") == ['{"a": 1}', '{"torn": ', '{"b": 2}', ""]
    assert log.stat().st_mode & 0o777 == 0o666 & ~atomic.current_umask()
