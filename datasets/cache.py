"""The decode cache: a dataset's images decoded once to uint8 and memory-mapped afterwards.

A cache is two files in ``<data-dir>/dmlbench-cache/`` (or ``$DMLBENCH_CACHE_DIR``):

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

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dmlbench.data.base import resolve_data_dir
from dmlbench.data.images import DecodeOptions, decode_into
from dmlbench.errors import DMLBenchError
from dmlbench.io import write_json

log = logging.getLogger("dmlbench")
FORMAT = "dmlbench-image-cache/1"
CACHE_DIR_ENV = "DMLBENCH_CACHE_DIR"


def cache_dir(data_dir: Path | str | None) -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return resolve_data_dir(data_dir) / "dmlbench-cache"


def content_key(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class ImageCache:
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
            raise DMLBenchError(f"{self.header_path} is not a dmlbench cache header (format {h.get('format') if isinstance(h, dict) else '?'!r}); "
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

    def load(self, files: list[Path], shape: tuple[int, int, int], skip_bad: bool = False,
             n_workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The images of ``files`` (memory-mapped) and a mask of the readable ones; builds the cache
        on first use or when stale."""
        from dmlbench.locks import locked

        t0 = time.perf_counter()
        key = content_key(self.root, files)
        h = self._header()
        why = None if h is None else self._valid(h, key, len(files), shape)
        if h is not None and why is None:
            return self._open(h, files, skip_bad)
        # One builder at a time: a second process waits, then finds the finished cache.
        self.images_path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.images_path.with_suffix(".lock")):
            h = self._header()
            if h is not None and self._valid(h, key, len(files), shape) is None:
                return self._open(h, files, skip_bad)
            if why:
                log.warning("%s: rebuilding the decode cache %s: %s", self.name, self.images_path, why)
            self.header_path.unlink(missing_ok=True)
            for orphan in self.images_path.parent.glob(f".{self.images_path.name}.*.tmp"):
                orphan.unlink(missing_ok=True)  # left by a builder that was killed (we hold the lock)
            h = self._build(files, shape, key, n_workers)
        log.info("%s: decoded %d images in %.1fs into %s", self.name, len(files), time.perf_counter() - t0,
                 self.images_path)
        return self._open(h, files, skip_bad)

    def _build(self, files: list[Path], shape: tuple, key: str, n_workers: int | None) -> dict:
        folder = self.images_path.parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.images_path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), *shape))
            del arr
            bad = decode_into(Path(tmp), files, self.opts, n_workers)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.images_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        h = {"format": FORMAT, "content_key": key, "files": len(files), "shape": list(shape),
             "decode": self.opts.key(), "root": str(self.real_root),
             "bad": [[i, str(files[i].relative_to(self.root)), why] for i, why in bad]}
        write_json(self.header_path, h)  # last: marks the cache complete
        return h

    def _open(self, h: dict, files: list[Path], skip_bad: bool) -> tuple[np.ndarray, np.ndarray]:
        ok = np.ones(len(files), dtype=bool)
        bad = h.get("bad") or []
        if bad:
            i, rel, why = bad[0]
            if not skip_bad:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                raise DMLBenchError(f"{self.name}: cannot read image {self.root / rel} ({why}){more}; remove or "
                                    "replace it, or set data.skip_bad=true to leave unreadable images out")
            ok[[b[0] for b in bad]] = False
            log.warning("%s: left out %d unreadable image(s) (data.skip_bad=true), e.g. %s", self.name, len(bad), rel)
        return np.load(self.images_path, mmap_mode="r"), ok
