"""The decode cache: a dataset's images decoded once to uint8 and memory-mapped afterwards.

A cache is two files in the user's cache folder, ``$DMLBENCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/dmlbench/decoded``, else ``~/.cache/dmlbench/decoded``; never in the data
folder, which may be read-only or shared:

- ``<name>-<identity>.npy``: the images (N, C, H, W) as uint8, an ordinary ``.npy`` that
  ``np.load(mmap_mode="r")`` maps without reading it;
- ``<name>-<identity>.json``: its header, written last, so a cache without one was cut off.

``identity`` hashes the dataset's root folder and the decode options; the header holds the
*content* key, a hash of every file's relative path, size and mtime. A cache whose content key
differs from the files now on disk is rebuilt (and says so), never reused; one whose image file is
missing or has the wrong length was cut off and is rebuilt. A header that is not a dmlbench
cache header is a one-line error naming the file: it is not ours to overwrite.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DiskFullError, DMLBenchError, is_disk_full
from dmlbench.core.io import UMASK, write_json
from dmlbench.core.locks import locked
from dmlbench.data.images import DecodeOptions, decode_into

log = logging.getLogger("dmlbench")
FORMAT = "dmlbench-image-cache/1"
CACHE_DIR_ENV = "DMLBENCH_CACHE_DIR"
CACHE_FULL_FIX = f"free space there, or set ${CACHE_DIR_ENV} to a folder with room, and re-run"


def cache_dir(data_dir: Path | str | None = None) -> Path:
    """Where decode caches go: $DMLBENCH_CACHE_DIR if set, else the user's cache folder
    (``$XDG_CACHE_HOME``, else ``~/.cache``) under ``dmlbench/decoded``. The data folder is only
    read (it may be read-only or shared); a cache's name holds a hash of the data's real root, so
    caches of several data folders live side by side. ``data_dir`` is not used (kept for callers)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dmlbench" / "decoded"


def relative(root: Path, files: Sequence[str | os.PathLike]) -> list[str]:
    """Each file's path below ``root``, with "/" (a string prefix test; pathlib's relative_to is ten
    times slower on a 50,000-file tree)."""
    prefix = os.path.join(os.fspath(root), "")
    return [s[len(prefix):].replace(os.sep, "/") if s.startswith(prefix) else Path(s).relative_to(root).as_posix()
            for s in map(os.fspath, files)]


def content_key(root: Path, files: Sequence[str | os.PathLike]) -> str:
    """A hash of every file's relative path, size and mtime."""
    h = hashlib.sha256()
    for f, rel in zip(files, relative(root, files)):
        st = os.stat(f)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a full disk is an error here, not a SIGBUS in a decode worker
    writing through the mapping."""
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        except AttributeError:  # no posix_fallocate (macOS)
            pass


class ImageCache:
    """The decode cache of one image folder and decode options: the .npy of its images and its .json header."""

    def __init__(self, name: str, root: Path, opts: DecodeOptions, folder: Path):
        # ``root`` as given (the files are paths below it, for relative_to); resolved for the identity,
        # so a relative or linked data folder finds the same cache.
        self.name, self.root, self.opts = name, Path(root), opts
        self.real_root = self.root.resolve()
        ident = hashlib.sha256(f"{self.real_root}\0{opts.key()}".encode()).hexdigest()[:12]
        stem = f"{name}-{opts.key()}-{ident}"
        self.images_path = Path(folder) / f"{stem}.npy"
        self.header_path = Path(folder) / f"{stem}.json"

    def _header(self) -> dict | None:
        if not self.header_path.exists():
            return None
        try:
            h = json.loads(self.header_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DMLBenchError(f"{self.header_path} is not a readable dmlbench cache header ({type(e).__name__}); "
                                "delete it (and the .npy beside it) to rebuild the cache") from None
        if not isinstance(h, dict) or h.get("format") != FORMAT:
            fmt = h.get("format") if isinstance(h, dict) else type(h).__name__
            raise DMLBenchError(f"{self.header_path} is not a dmlbench cache header (format {fmt!r}); "
                                "move it away or delete it to rebuild the cache")
        return h

    def _valid(self, h: dict, key: str, n: int, shape: tuple) -> str | None:
        """None if the cache can be used, else why it must be rebuilt."""
        if h.get("content_key") != key or h.get("files") != n:
            return "the image files changed since it was built"
        expected = int(np.prod(shape)) * n
        if not self.images_path.is_file():
            return "its image file is missing"
        try:
            arr = np.load(self.images_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            return f"its image file is unreadable ({type(e).__name__}), cut off while written?"
        if arr.dtype != np.uint8 or arr.shape != (n, *shape) or arr.size != expected:
            return f"its image file has shape {arr.shape}, not {(n, *shape)}: cut off while written?"
        return None

    def load(self, files: Sequence[str | os.PathLike], shape: tuple[int, int, int], skip_bad: bool = False,
             n_workers: int | None = None, used: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The images of ``files`` (memory-mapped, one row per file) and a mask of the readable ones;
        builds the cache on first use or when stale. ``used``: the rows the caller will read (default
        all); an unreadable file outside them is no error."""
        t0 = time.perf_counter()
        key = content_key(self.root, files)
        h = self._header()
        why = None if h is None else self._valid(h, key, len(files), shape)
        if h is not None and why is None:
            return self._open(h, files, skip_bad, used)
        # One builder at a time: a second process waits, then finds the finished cache.
        try:
            self.images_path.parent.mkdir(parents=True, exist_ok=True)
            with locked(self.images_path.with_suffix(".lock")):
                h = self._header()
                if h is not None and self._valid(h, key, len(files), shape) is None:
                    return self._open(h, files, skip_bad, used)
                if why:
                    log.warning("%s: rebuilding the decode cache %s: %s", self.name, self.images_path, why)
                self.header_path.unlink(missing_ok=True)
                for orphan in self.images_path.parent.glob(f".{self.images_path.name}.*.tmp"):
                    orphan.unlink(missing_ok=True)  # left by a builder that was killed (we hold the lock)
                h = self._build(files, shape, key, n_workers)
        except DiskFullError as e:  # its header: the cache's own way out, too
            raise DiskFullError(e.path, e.quota, CACHE_FULL_FIX) from e
        except OSError as e:
            if is_disk_full(e):  # the same one line as any full disk, with the cache's own way out
                raise DiskFullError.of(e, self.images_path, CACHE_FULL_FIX) from e
            raise DMLBenchError(f"{self.name}: cannot write the decode cache in {self.images_path.parent} "
                                f"({type(e).__name__}: {e.strerror or e}); free space there, or set ${CACHE_DIR_ENV} "
                                "to a writable folder") from None
        log.info("%s: decoded %d images in %.1fs into %s", self.name, len(files), time.perf_counter() - t0,
                 self.images_path)
        return self._open(h, files, skip_bad, used)

    def _build(self, files: Sequence[str | os.PathLike], shape: tuple, key: str, n_workers: int | None) -> dict:
        folder = self.images_path.parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.images_path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes owner-only files; a shared data folder shares its cache
            os.close(fd)
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), *shape))
            del arr
            _reserve(Path(tmp))
            bad = decode_into(Path(tmp), files, self.opts, n_workers)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.images_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        h = {"format": FORMAT, "content_key": key, "files": len(files), "shape": list(shape),
             "decode": self.opts.key(), "root": str(self.real_root),
             "bad": [[i, relative(self.root, [files[i]])[0], why] for i, why in bad]}
        write_json(self.header_path, h)  # last: marks the cache complete
        return h

    def _open(self, h: dict, files: Sequence[str | os.PathLike], skip_bad: bool, used: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        ok = np.ones(len(files), dtype=bool)
        all_bad = h.get("bad") or []
        ok[[b[0] for b in all_bad]] = False
        if used is None:
            bad = all_bad
        else:
            in_use = np.zeros(len(files), dtype=bool)
            in_use[used] = True
            bad = [b for b in all_bad if in_use[b[0]]]
        if bad:
            i, rel, why = bad[0]
            if not skip_bad:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                raise DMLBenchError(f"{self.name}: cannot read image {self.root / rel} ({why}){more}; remove or "
                                    "replace it, or set data.skip_bad=true to leave unreadable images out")
            log.warning("%s: left out %d unreadable image(s) (data.skip_bad=true), e.g. %s", self.name, len(bad), rel)
        return np.load(self.images_path, mmap_mode="r"), ok
