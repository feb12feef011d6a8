"""The run-folder lock: one uncertlr process trains in (or writes) a run folder at a time.

Re-exported by :mod:`uncertlr.runfolder` (``lock_run_dir``, ``RunFolderBusy``, ``LOCK_FILE``);
imports nothing of uncertlr.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "RunFolderBusy", "lock_run_dir"]

LOCK_FILE = ".uncertlr-lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock (it is training in it or writing it)."""


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def lock_run_dir(run: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the run folder's lock (``.uncertlr-lock``) while the block runs; yields the folder.

    The lock is an advisory ``flock`` on the lock file: the operating system drops it when the
    holder exits, even by ``kill -9``, so a crashed run never leaves its folder locked.

    Raises:
        RunFolderBusy: another process holds the lock (the message gives its pid).
        FileNotFoundError / NotADirectoryError / PermissionError: the folder cannot hold a lock file.

    Example:
        >>> import tempfile
        >>> with lock_run_dir(tempfile.mkdtemp()) as run:
        ...     pass
    """
    run = Path(run)
    path = run / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunFolderBusy(
                f"{run} is in use by another uncertlr process{who}; wait for it to finish or use another folder"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield run
    finally:
        os.close(fd)  # closing the descriptor releases the lock
