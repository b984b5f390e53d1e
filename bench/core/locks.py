"""Advisory file locks (``fcntl.flock``) that the OS releases when their process dies.

A run folder and a decode cache are each guarded by one: two ``bench run`` processes, local
workers or Ray tasks on a shared filesystem never train the same run, or build the same cache,
at once; a crashed holder leaves nothing to clean up. A tune's study file is created under one,
so that several ``bench tune`` processes started at once on a new suite never race to make it.

A holder may remove its lock file (a command that could not start leaves nothing behind): a
process that was waiting on the removed file sees that it is gone once it holds it, and takes the
lock anew on the file now at that name, so two processes never both hold "the" lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from dmlbench.core.errors import DMLBenchError, full_disk_reported


class LockTimeoutError(DMLBenchError):
    """A lock another process held for longer than the caller would wait."""


class Lock:
    """An exclusive ``flock`` on the file at ``path``; the holder's pid is written into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds (or not at all if not ``blocking``); True if taken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with full_disk_reported(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # O_NOFOLLOW: a link planted at the lock's name is refused rather than followed.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            if not self._flock(fd, blocking, deadline):
                os.close(fd)
                return False
            if self._is_current(fd):
                self._fd = fd
                try:  # who holds it, for a person looking: not worth failing for on a full disk
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass
                return True
            os.close(fd)  # its holder removed the file while we waited: lock the file now at the name

    @staticmethod
    def _flock(fd: int, blocking: bool, deadline: float | None) -> bool:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB))
                return True
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    return False
                time.sleep(0.2)

    def _is_current(self, fd: int) -> bool:
        """Whether the locked file is still the one at ``path`` (not removed or replaced meanwhile)."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def acquire_or_raise(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (None: as long as it takes); a
        :class:`LockTimeoutError` naming the lock file and its holder otherwise; a folder where the
        lock file cannot be made is a one-line error too."""
        try:
            if self.acquire(timeout=timeout):
                return
        except OSError as e:
            raise DMLBenchError(f"cannot take the lock {self.path} ({e.strerror or e}): make its folder writable, "
                                "or choose another folder") from e
        try:
            pid = self.path.read_text().strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise LockTimeoutError(f"timed out after {timeout:.0f} s waiting for the lock {self.path}, held by process "
                               f"{pid}; re-run once that process is done (the lock goes when it ends)")

    def release(self) -> None:
        """Let go of the lock if held; a no-op otherwise."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def locked(path: Path):
    """Hold the lock at ``path`` for the block, waiting as long as it takes; yields the :class:`Lock`."""
    lock = Lock(path)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
