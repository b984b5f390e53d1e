"""User-facing errors.

Every problem a user can fix (a missing file, a misspelled option, a corrupt download, a full
disk) raises :class:`DMLBenchError` with a one-line message that names the problem and the fix.
The CLI prints it without a traceback and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path


class DMLBenchError(Exception):
    """A problem with the user's input, reported as one line."""


class NonFiniteLossError(DMLBenchError):
    """A loss term became NaN or inf during training."""


class NonFiniteEmbeddingError(DMLBenchError, ValueError):
    """Embeddings handed to the evaluation hold NaN or inf values."""


# ENOSPC: the file system is full; EDQUOT: the user's quota on it is spent. Both are fixed by the
# user freeing space, never by dmlbench, so both are one line.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RERUN_FIX = "free space there and re-run: complete runs are skipped"


class DiskFullError(DMLBenchError):
    """No space left on the device (or the disk quota spent) while writing ``path``; ``fix`` says
    what to do (by default: free space and re-run, complete runs are skipped)."""

    def __init__(self, path: Path | str | None, quota: bool = False, fix: str = RERUN_FIX):
        self.path, self.quota, self.fix = (Path(path) if path is not None else None), quota, fix
        what = "disk quota exceeded" if quota else "no space left on device"
        where = f"writing {path}" if path is not None else "(bench -v logs where)"
        super().__init__(f"{what} {where}; {fix}")

    @classmethod
    def of(cls, e: OSError, path: Path | str | None = None, fix: str = RERUN_FIX) -> DiskFullError:
        """The error for the disk-full OSError ``e``, naming ``path`` (default: the file ``e`` names)."""
        return cls(path if path is not None else e.filename, quota=e.errno == errno.EDQUOT, fix=fix)

    def __reduce__(self):
        # Rebuilt from its own arguments (a worker process hands it to its driver pickled; the
        # default would call __init__ with the message alone).
        return type(self), (self.path, self.quota, self.fix)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is an OSError for a full disk (ENOSPC) or a spent quota (EDQUOT)."""
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


@contextmanager
def full_disk_reported(path: Path | str, fix: str = RERUN_FIX):
    """Run the block; a full disk or spent quota in it becomes a :class:`DiskFullError` naming
    ``path`` (chained to the OSError, whose traceback ``bench -v`` logs). The one place every
    writer turns ENOSPC/EDQUOT into one line."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError.of(e, path, fix) from e


def user_error(e: BaseException) -> DMLBenchError | None:
    """The one line a command prints for ``e``: a DMLBenchError as it is, a full disk's OSError as
    a :class:`DiskFullError`; None for anything else (a bug, which keeps its traceback). What a
    library raised underneath is logged at INFO (shown under ``bench -v``)."""
    import logging

    if isinstance(e, OSError) and not is_disk_full(e):
        return None
    if not isinstance(e, (DMLBenchError, OSError)):
        return None
    if isinstance(e, OSError) or e.__cause__ is not None:
        logging.getLogger("dmlbench").info("the error below came from:", exc_info=e)
    return DiskFullError.of(e) if isinstance(e, OSError) else e


def exception_line(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut at a word to about ``limit`` characters: what a one-line
    error quotes of an exception raised by a user's code."""
    first = (str(e).strip().splitlines() or [""])[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
