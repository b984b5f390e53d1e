"""Advisory file locks (``fcntl.flock``) that the OS releases when their process dies.

A run folder and a decode cache are each guarded by one: two ``bench run`` processes, local
workers or Ray tasks on a shared filesystem never train the same run, or build the same cache,
at once; a crashed holder leaves nothing to clean up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path


class Lock:
    """An exclusive ``flock`` on the file at ``path``; the holder's pid is written into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds (or not at all if not ``blocking``); True if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a link planted at the lock's name is refused rather than followed.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB))
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return True
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not blocking or (deadline is not None and time.monotonic() >= deadline):
                    os.close(fd)
                    return False
                time.sleep(0.2)

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
