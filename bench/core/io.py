"""Crash-safe, link-safe file writes, and reads that name the corrupt file.

Writes go to a temp file created exclusively (``mkstemp``: O_CREAT|O_EXCL, never following a
link) in the target folder, are fsynced, then renamed over the target. A rename replaces a link
planted at the target's name instead of writing through it, so a result never lands outside its
folder. A crash leaves at most an orphan ``.<name>.*.tmp``, which :func:`clean_temp_files`
removes on the next run.

A full disk or spent quota while writing is a :class:`~dmlbench.core.errors.DiskFullError`
naming the file (one line), and leaves no temp file behind.

Reads of result files raise :class:`CorruptFileError` (a one-line :class:`DMLBenchError`)
naming the file, never a traceback from json, numpy or torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dmlbench.core.errors import DMLBenchError, full_disk_reported

if TYPE_CHECKING:  # the lock is the caller's: reading results (the report stage) needs no locks
    from dmlbench.core.locks import Lock

UMASK = os.umask(0)
os.umask(UMASK)
TEMP_SUFFIX = ".tmp"


class CorruptFileError(DMLBenchError):
    """A result or cache file that exists but cannot be read back; ``fix`` says what to do."""

    def __init__(self, path: Path, why: str, fix: str = ""):
        self.path = Path(path)
        super().__init__(f"{path} is corrupt or not a dmlbench file ({why})" + (f"; {fix}" if fix else ""))


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB chunks (weights and archives can be GBs)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: to an exclusive temp file, fsynced, then renamed
    over it. A full disk is a :class:`~dmlbench.core.errors.DiskFullError` naming ``path``."""
    path = Path(path)
    with full_disk_reported(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes owner-only files; results are meant to be shared
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically; values JSON cannot hold are written as str."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write the named ``arrays`` as one compressed .npz, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an .npy without pickling (object arrays are refused), atomically."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def torch_save(path: Path, obj: Any) -> None:
    """Write ``obj`` with ``torch.save`` to ``path``, atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path, expect: type = dict) -> Any:
    """The JSON value in ``path``, which must be an ``expect``; a :class:`CorruptFileError` otherwise."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(path, type(e).__name__) from None
    if not isinstance(value, expect):
        raise CorruptFileError(path, f"holds a {type(value).__name__}, not a {expect.__name__}")
    return value


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def _array_file_problem(path: Path, magic: bytes, kind: str, e: Exception) -> str:
    """What is wrong with an array file numpy could not read, in words (numpy's own message for a
    file that is not an array file talks of unpickling, which dmlbench never does)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    if head != magic:
        return f"not a {kind} file"
    if "pickled" in str(e) or "allow_pickle" in str(e):
        return "it holds Python objects, which dmlbench never unpickles"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:160]}" if first else f"cut off or damaged ({type(e).__name__})"


def read_npy(path: Path, fix: str = "") -> np.ndarray:
    """The array in an .npy, read without unpickling; a :class:`CorruptFileError` naming the file otherwise."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CorruptFileError(path, _array_file_problem(path, NPY_MAGIC, ".npy", e), fix) from None


def read_npz(path: Path, fix: str = "", require: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of an .npz, read without unpickling; ``require``: arrays it must hold."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (object arrays), OSError, EOFError
        raise CorruptFileError(path, _array_file_problem(path, ZIP_MAGIC, ".npz (zip)", e), fix) from None
    missing = [k for k in require if k not in arrays]
    if missing:
        raise CorruptFileError(path, f"no {', '.join(missing)} array", fix)
    return arrays


def read_metrics(path: Path) -> dict[str, float]:
    """A run's metrics.json: a non-empty object of numbers (null for a metric without a value)."""
    m = read_json(path)
    if not m:
        raise CorruptFileError(path, "holds no metrics")
    bad = [k for k, v in m.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if bad:
        raise CorruptFileError(path, f"{', '.join(map(repr, bad[:3]))} not a number")
    return m


def torch_load(path: Path, map_location=None) -> Any:
    """A checkpoint loaded with ``weights_only=True``: tensors and plain types only, never code."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a file that is no checkpoint fails in many ways deep in torch/pickle
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(path, f"{type(e).__name__}: {first[:160]}") from None


def clean_temp_files(folder: Path, older_than_s: float = 3600.0) -> int:
    """Remove orphan ``.<name>.*.tmp`` files a killed writer left under ``folder``.

    Only files older than ``older_than_s`` are removed, so a writer in another live process
    (sharing the folder) never loses the temp file it is about to rename.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now, n = time.time(), 0
    for p in folder.rglob(f".*{TEMP_SUFFIX}"):
        try:
            if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
        except OSError:
            pass
    return n


@contextmanager
def undo_if_refused(folder: Path, files: tuple[str, ...] = (), on: type[BaseException] = BaseException,
                    lock: Lock | None = None, lock_timeout: float | None = None):
    """Run the block with ``folder`` there; if it raises ``on``, remove what this call made: the
    named ``files`` in the folder that were not there before, then the folders it created while
    they are empty (a command that could not start leaves nothing behind, and nothing that was
    there is touched).

    ``lock``: a :class:`~dmlbench.core.locks.Lock` held for the whole block (waiting at most
    ``lock_timeout`` seconds, see its ``acquire_or_raise``), taken before the files are looked at,
    so that of several processes making the same files at once, each undoes only its own: one
    that finds another's files under the lock never removes them. The lock file goes too on
    refusal if this call made it."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    held = lock
    if held is not None:
        lock_was_there = held.path.exists()
        held.acquire_or_raise(lock_timeout)
    try:
        new_files = [folder / n for n in files if not (folder / n).exists()]
        try:
            yield
        except on:
            for f in new_files:
                f.unlink(missing_ok=True)
            if held is not None and not lock_was_there:
                # Safe while held: a process waiting on this file finds it gone and takes a new one.
                held.path.unlink(missing_ok=True)
            for p in made:
                try:
                    p.rmdir()
                except OSError:
                    break
            raise
    finally:
        if held is not None:
            held.release()
