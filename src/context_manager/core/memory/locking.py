"""The storage directory (mode 0o700) and its lock file (one process per ``storage_path``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from pathlib import Path

from context_manager.core.errors import StorageError, StorageLockedError

LOCK_FILE_NAME = ".lock"
"""Lock file under ``storage_path`` (records the holder's pid and host)."""

_DIRECTORY_MODE = 0o700


def make_private_directory(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0o700 (existing directories are left alone)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    if current.exists() and not current.is_dir():
        raise StorageError(f"cannot create directory {path}: {current} is a file", path=path)
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=_DIRECTORY_MODE, exist_ok=True)
            directory.chmod(_DIRECTORY_MODE)
    except OSError as error:
        raise StorageError(f"cannot create directory {path}: {error.strerror or error}", path=path) from error


_held_here: dict[int, tuple[str, int]] = {}  # fd -> (real path of the lock file, pid that took it)
_held_lock = threading.Lock()


def acquire_lock(path: Path) -> int:
    """Take the exclusive lock on ``path`` (released by the kernel if the process dies).

    Raises:
        StorageLockedError: another process holds it, or another manager of this process does (the
            message says which: "stop that process" would be wrong advice for our own pid).
        StorageError: the lock file cannot be opened, locked or written (nothing is left open or locked).
    """
    real = os.path.realpath(path)
    with _held_lock:
        if any(held == (real, os.getpid()) for held in _held_here.values()):
            raise StorageLockedError(path.parent, holder_text(), same_process=True)
        fd = _lock_file(path, same_process=None)
        _held_here[fd] = (real, os.getpid())
        return fd


def replace_lock(old: int | None, path: Path) -> int:
    """Take the lock on a recreated lock file at ``path`` and release ``old`` (the one deleted or replaced).

    Used when the storage directory was removed behind the back of the process holding it: without a
    new lock another process could open the same storage.

    Raises:
        StorageLockedError: another process took the new lock file first.
        StorageError: the lock file cannot be opened, locked or written (``old`` is kept).
    """
    real = os.path.realpath(path)
    with _held_lock:
        fd = _lock_file(path, same_process=False)
        _held_here[fd] = (real, os.getpid())
        if old is not None:
            _held_here.pop(old, None)
            with contextlib.suppress(OSError):
                os.close(old)  # closing drops the flock on the old (unlinked) file
        return fd


def _lock_file(path: Path, *, same_process: bool | None) -> int:
    """Open ``path``, lock it and record this process in it; its descriptor (call with ``_held_lock`` held).

    Whatever fails, the descriptor is closed (which drops the lock): a failed write of the holder (a
    full disk) once left the file open and locked, and the next open in this process was told another
    process held the storage.

    Raises:
        StorageLockedError: another process holds it (``same_process``: whether the holder is this
            process; ``None``: as the file says).
        StorageError: the lock file cannot be opened, locked or written.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise StorageError(f"cannot open lock file {path}: {error}", path=path) from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = _read_holder(fd)
        finally:
            os.close(fd)
        mine = holder == holder_text() if same_process is None else same_process
        raise StorageLockedError(path.parent, holder, same_process=mine) from None
    except OSError as error:
        os.close(fd)
        raise StorageError(f"cannot lock lock file {path}: {error.strerror or error}", path=path) from error
    try:
        _record_holder(fd)
    except OSError as error:
        os.close(fd)  # the lock goes with it
        raise StorageError(
            f"cannot write lock file {path}: {error.strerror or error}; the storage was not opened "
            "(free space on its file system, then open it again)",
            path=path,
        ) from error
    return fd


def lock_fault(fd: int | None, path: Path) -> str | None:
    """``"removed"`` or ``"replaced"`` when the lock file at ``path`` is not the one ``fd`` holds."""
    if fd is None:
        return None
    try:
        held = os.fstat(fd)
        current = path.stat()
    except FileNotFoundError:
        return "removed"
    except OSError:
        return None
    return None if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino) else "replaced"


def _record_holder(fd: int) -> None:
    """Write who holds the lock into its file: overwritten in place, cut only if it was longer.

    Truncating to zero first made the filesystem free the file's block and allocate one again at every
    open: 0.13 ms on ext4 when the disk is idle, 1-4 ms while other jobs write, for a file that only ever
    holds one line of about the same length.
    """
    text = f"{holder_text()}\n".encode()
    written = os.pwrite(fd, text, 0)
    if os.fstat(fd).st_size > written:
        os.ftruncate(fd, written)


def _read_holder(fd: int) -> str:
    """Who holds the lock, as its file says (its first line: :func:`holder_text`)."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace")
    except OSError:  # unreadable: the lock is held all the same
        return "another process"
    return text.partition("\n")[0].strip() or "another process"


def holder_text() -> str:
    """Who this process is, as a lock file records it: ``pid N on host H``."""
    return f"pid {os.getpid()} on host {socket.gethostname()}"


def release_lock(fd: int | None) -> None:
    """Release and close a lock taken by :func:`acquire_lock` (``None`` does nothing).

    A descriptor this process did not take (one inherited across ``os.fork()``, closed in the child as it
    started) is left alone: ``LOCK_UN`` on it would release the parent's lock.
    """
    if fd is None:
        return
    with _held_lock:
        if _held_here.pop(fd, None) is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _forget_parent_locks() -> None:
    """In a forked child: close the inherited descriptors of the parent's locks, without unlocking.

    A ``flock`` belongs to the open file, which the child shares: kept open here, the lock would stay
    held while any child lives, even after the parent died (a gunicorn master killed, its workers still
    running), and a restarted process would get ``StorageLockedError``. Closing the child's descriptor
    leaves the parent's lock held by the parent.
    """
    global _held_lock
    _held_lock = threading.Lock()  # another thread of the parent may have held it at the fork
    for fd in list(_held_here):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_here.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_parent_locks)
