"""Writes that never leave a half-written file or folder behind, one line for every way they fail, and
one writer per output.

Everything lmforge writes goes to a temporary path beside the target first and is renamed into place
once complete, so a crash, Ctrl-C or SIGKILL leaves either the old content or the new, never a mix.
A full disk, a read-only file system or a folder without write permission is one line naming the path
and the fix (`writing`), with the old content untouched. An output folder is held by an OS lock for the
life of the writing process (`locked`): a second writer is refused with the holder's pid, and stale
temporaries of a killed writer are removed by the next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.errors import LmforgeError

_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (or write elsewhere) and run the command again",
    errno.EDQUOT: "the disk quota is used up: free some space (or write elsewhere) and run the command again",
    errno.EROFS: "the file system is read-only: write to a folder on a writable disk",
    errno.EACCES: "permission denied: write to a folder you own, or fix its permissions",
    errno.EPERM: "operation not permitted: write to a folder you own, or fix its permissions",
}


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, a read-only file system or a permission error inside the block into one line."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FIXES:
            raise
        raise LmforgeError(f"cannot write {path}: {os.strerror(e.errno)}; {_FIXES[e.errno]}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


# ----------------------------------------------------------------------------------------------------
# One writer per output


_HELD: dict[Path, int] = {}
"""Locks this process holds: path -> depth (a holder may enter `locked` again for the same path)."""


def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of output `path` (a hidden `.NAME.lock` file beside it, never deleted) for
    the block. The OS releases it when the process ends, however it ends."""
    path = Path(path).absolute()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    lock = lock_file(path)
    with writing(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644 & ~_umask() | 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise LmforgeError(f"{path} is being written by another lmforge process (pid {holder}): wait for it to "
                           "finish, or stop it") from None
    try:
        try:  # the pid is for the message of a second writer; the lock holds without it (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        _HELD[path] = 1
        _clean_stale(path)  # a killed writer's leftovers: nobody else can be writing them now
        yield
    finally:
        _HELD.pop(path, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _clean_stale(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.name.endswith(".tmp") or ".old-" in stale.name:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path`, on failure it is removed.

    Refuses an existing `path` unless `overwrite`; the old folder is only removed once the new one is
    complete, so a failed run never destroys earlier output. `path` is locked meanwhile.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise LmforgeError(f"output folder {path} already exists: choose another --out or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise LmforgeError(f"output path {path} exists and is not a folder: remove it or choose another --out")
    with locked(path), writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual permissions
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
