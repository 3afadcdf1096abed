"""Durable files: the one atomic write every writer of compatkit uses, and strict JSON reads.

A result file is either the old one or the new one, never half of one: the bytes go to a
temporary file with a unique name in the same folder (two writers never share it), the file
is fsynced, renamed over the target, and the folder is fsynced so that the rename survives a
power cut. A crash leaves at worst a hidden ``.NAME.*.tmp`` file, never a damaged ``NAME``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CompatkitError, InputError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_lock",
    "fsync_dir",
    "lock_held",
    "read_json",
    "unwritable_dir",
]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (POSIX); skipped where a folder cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a fresh temporary file beside ``path``, then rename it to ``path``.

    The folder is created when missing. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.is_dir():  # os.replace would fail only after the whole write
        raise InputError(f"{path}: is a directory, cannot write a file there")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON, atomically. NaN and infinity are refused: they are not JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_json(
    path: str | os.PathLike[str],
    what: str = "",
    error: type[CompatkitError] = InputError,
) -> Any:
    """A JSON file's content; every failure is one ``error`` line naming the file.

    ``what`` says what the file is ("sweep index", "backfill plan"); a byte-order mark is
    accepted; a file nested too deeply for Python's parser is refused, not a RecursionError.
    """
    p = Path(path)
    name = f"{what} {p}" if what else str(p)
    try:
        return json.loads(p.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except json.JSONDecodeError as e:
        raise error(f"{name}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise error(f"{name}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise error(f"{name}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise error(f"{name}: cannot be read ({e.strerror or e})") from None


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], wait_s: float, refuse: Callable[[], Exception]
) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created, with its folder, when missing)
    for the ``with`` block; raise ``refuse()`` after ``wait_s`` seconds of waiting (0: at
    once). The kernel releases the lock when its process dies: a killed holder blocks no one.
    """
    import fcntl

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+b") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise refuse() from None
                time.sleep(0.2)  # s between tries
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_held(path: str | os.PathLike[str]) -> bool:
    """Whether a process holds :func:`file_lock` on ``path`` now (a missing file: no)."""
    import fcntl

    try:
        f = open(path, "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def unwritable_dir(path: str | os.PathLike[str], create: bool = True) -> str | None:
    """Why folder ``path`` cannot take new files, in a few words; None when it can.

    With ``create`` the folder is made (parents too) and a file is created and removed in
    it: the one test that also holds for root, read-only mounts and network file systems.
    Without, nothing is written: only the folder, or its nearest existing parent, is looked
    at (a dry run).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        return "exists and is not a folder"
    if not create:
        q = p
        while not q.exists() and q.parent != q:
            q = q.parent
        if not q.is_dir():
            return f"{q} is not a folder"
        return None if os.access(q, os.W_OK | os.X_OK) else f"{q} is not writable"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the folder ({e.strerror or e})"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=p)
    except OSError as e:
        return f"cannot write in it ({e.strerror or e})"
    os.close(fd)
    os.unlink(tmp)
    return None
