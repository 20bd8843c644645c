"""Atomic writes: write to a temporary name in the destination's folder, then ``os.replace`` it into place.

One mechanism for every output of the package, so an interrupted or failing write never leaves a
half-written file under the final name and never touches an existing destination::

    from ditflow_fast import atomic

    atomic.write_bytes(dest, data)             # -> dest
    atomic.write_text(dest, text)              # utf-8
    atomic.write_json(dest, obj)               # json.dumps(obj, indent=2, default=str) + newline
    atomic.write_safetensors(dest, tensors, metadata)  # safetensors' save_file
    with atomic.atomic_path(dest) as tmp:      # for writers that need a path (safetensors' save_file, PyAV, PIL)
        save_file(tensors, tmp)
    with atomic.atomic_dir(dest) as tmp:       # a folder: fill ``tmp``; it is renamed to ``dest`` at the end
        (tmp / "a.png").write_bytes(...)

Rules, the same for all of them:

- The temporary is created by ``tempfile.mkstemp`` / ``mkdtemp`` next to ``dest`` (same file system,
  so the rename is atomic), named ``.<name>.tmp-<random><suffix>``: unique per writer, so concurrent
  writers never share one; the last rename wins. The suffix is ``dest``'s, for writers that pick a
  format from the extension.
- The destination's folder is created (with its parents) when missing.
- What is created ends with the modes a plain ``open()`` / ``mkdir()`` would give under the current
  umask (0644 / 0755 under umask 022), not mkstemp's 0600 / mkdtemp's 0700.
- On any exception in the block (or in the rename) the temporary is removed and ``dest`` is left
  as it was; the exception propagates.
- ``dest`` being a symlink: the link itself is replaced, not its target (as with any rename).
- No ``fsync``: the rename protects against an interrupted process, not against power loss.
- A full disk (or quota) is an ``OSError`` with errno ``ENOSPC`` (``EDQUOT``) from every writer, so a
  command line can name it in one line (``cli/main.py``).

``check_writable(dest, option=..., folder=...)`` is the matching up-front check for a command line:
it raises a one-line ``ValueError`` naming the option when ``dest`` could not be written, before
any expensive work.

``append_line(dest, text)`` is the one writer that does not replace: it adds one line to a log
(JSONL records) in a single ``O_APPEND`` write, after a newline when the file ends without one (a
line torn by an earlier crash), so a record is never glued to a torn one.

``dir_lock(folder, what, option=...)`` takes an exclusive, non-blocking ``flock`` on a folder itself
(no lock file: the folder stays as it was; created when missing) and returns the descriptor to
``os.close`` when done; a folder another process holds is refused with a one-line ``ValueError``.

``atomic_dir`` replaces an existing folder by moving it aside to a unique name, renaming the new one
in and deleting the old; between those two renames (microseconds) ``dest`` is missing, but it is
never half-written. A ``dest`` that exists and is not a folder is refused before the block runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "check_writable", "current_umask", "dir_lock", "write_bytes", "write_json",
           "write_safetensors", "write_text"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, without changing it where Linux says it (``/proc/self/status``, kernel 4.7+).

    Elsewhere it is read by setting and restoring it under a lock; the transient value is 077, so a
    file another thread creates in that instant is more private than asked, never less.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def _file_mode() -> int:
    return 0o666 & ~current_umask()


def _dir_mode() -> int:
    return 0o777 & ~current_umask()


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-"


@contextlib.contextmanager
def atomic_path(dest) -> Iterator[Path]:
    """Yield a fresh temporary file path next to ``dest``; on a clean exit it is renamed to ``dest``.

    The temporary exists (empty) when the block starts; the writer may overwrite or recreate it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(dest), suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(dest, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically; returns ``dest`` as a Path."""
    dest = Path(dest)
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return dest


def write_text(dest, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``dest`` atomically; returns ``dest`` as a Path."""
    return write_bytes(dest, text.encode(encoding))


def write_json(dest, obj, *, indent: int | None = 2, **dumps_kwargs) -> Path:
    """Write ``json.dumps(obj)`` (indent 2, ``default=str`` unless given) and a newline to ``dest`` atomically.

    ``obj`` is serialised before anything is created, so an unserialisable object leaves no trace.
    """
    dumps_kwargs.setdefault("default", str)
    return write_text(dest, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def write_safetensors(dest, tensors: dict, metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file(tensors, dest, metadata)`` atomically; returns ``dest`` as a Path."""
    from safetensors.torch import save_file

    dest = Path(dest)
    with atomic_path(dest) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as exc:
            # safetensors reports an I/O error as a SafetensorError "... (os error 28)": give it its errno back
            for code in (errno.ENOSPC, errno.EDQUOT):
                if f"(os error {code})" in str(exc):
                    raise OSError(code, os.strerror(code)) from exc
            raise
    return dest


def _move_aside(dest: Path) -> Path | None:
    """Rename the folder ``dest`` to a fresh unique name beside it; None when it vanished meanwhile."""
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    try:
        os.replace(dest, aside)  # a directory may be renamed onto an empty one
    except FileNotFoundError:
        os.rmdir(aside)
        return None
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(aside)
        raise
    return aside


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dest) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``dest``; on a clean exit it replaces ``dest``.

    An existing folder ``dest`` is replaced as a whole (its old contents are deleted, not merged).
    Raises ``NotADirectoryError`` up front when ``dest`` exists and is not a folder.
    """
    dest = Path(dest)
    if (dest.exists() or dest.is_symlink()) and not dest.is_dir():
        raise NotADirectoryError(f"{dest} exists and is not a folder; refusing to replace it with one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest), dir=dest.parent))
    asides: list[Path] = []
    try:
        yield tmp
        os.chmod(tmp, _dir_mode())
        for _ in range(8):  # concurrent writers may put a folder back between our move and our rename
            try:
                os.replace(tmp, dest)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not dest.is_dir():
                    raise
            aside = _move_aside(dest)
            if aside is not None:
                asides.append(aside)
        else:
            raise OSError(errno.EBUSY, f"could not rename a folder to {dest}: it kept being replaced")
    except BaseException:
        _remove(tmp)
        # put the original back if we moved it and nothing took its place
        if asides and not (dest.exists() or dest.is_symlink()):
            with contextlib.suppress(OSError):
                os.replace(asides.pop(0), dest)
        for a in asides:
            _remove(a)
        raise
    for a in asides:
        _remove(a)


def append_line(dest, text: str) -> Path:
    """Append ``text`` and a newline to ``dest`` (created with its folder, umask modes) in one write."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = text.rstrip("\n").encode("utf-8") + b"\n"
    fd = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(dest, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)
    return dest


def check_writable(dest, *, option: str = "path", folder: bool = False) -> None:
    """Raise ``ValueError("<option> <dest>: <why>")`` unless ``dest`` can be written; creates nothing that stays.

    ``folder=False``: ``dest`` is a file; it must not be a folder, and an existing one must open for
    appending; a missing one must be creatable (its missing folders included). ``folder=True``:
    ``dest`` is a folder; it must not be a file, and files must be creatable in it (or, when it is
    missing, in its nearest existing parent, where it will be created). Creatability is probed by
    making and removing a temporary file, so a read-only file system, missing permissions and a
    parent that is a file are all caught, whoever the user is.
    """
    dest = Path(dest)
    where = f"{option} {dest}"
    if folder:
        if (dest.exists() or dest.is_symlink()) and not dest.is_dir():
            raise ValueError(f"{where}: exists and is not a folder")
    else:
        if dest.is_dir():
            raise ValueError(f"{where}: is a folder, not a file")
        if dest.exists():
            try:
                open(dest, "ab").close()
            except OSError as exc:
                raise ValueError(f"{where}: cannot write to it ({exc.strerror or exc})") from None
            return
    probe = dest if folder and dest.is_dir() else dest.parent
    while not (probe.exists() or probe.is_symlink()) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{where}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
    except OSError as exc:
        raise ValueError(f"{where}: cannot create files in {probe} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


def dir_lock(path, what: str, *, option: str = "--out") -> int:
    """An exclusive, non-blocking ``flock`` on the folder ``path`` itself (created with its parents when
    missing); returns the open descriptor, which holds the lock until it is ``os.close``d.

    Raises ``ValueError("<option> <path>: another <what> is writing into it; ...")`` when another open
    descriptor (another process, or another lock in this one) holds it, and ``ValueError`` naming the
    system's reason (``strerror``) for any other failure: a folder that cannot be created or opened, a
    file system without locks (some network mounts).
    """
    path = Path(path)
    where = f"{option} {path}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ValueError(f"{where}: cannot be opened to lock it ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ValueError(f"{where}: another {what} is writing into it; wait for it or use another "
                             f"{option}") from None
        raise ValueError(f"{where}: cannot be locked ({exc.strerror or exc}); use a folder on a local "
                         "file system") from None
    return fd
