"""Image files: finding them in a folder tree, and decoding them in parallel to uint8.

Decoding uses Pillow with ``draft`` (libjpeg's reduced-size DCT decoding, 2-8x less work when a
JPEG is much larger than the target size) and a process pool over every core. Workers write
their images straight into the memory-mapped output file, so no pixel crosses a pipe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError

log = logging.getLogger("dmlbench")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
RESIZE_MODES = ("crop", "stretch")
SERIAL_BELOW = 512  # fewer files than this are decoded in the calling process


@dataclass(frozen=True)
class DecodeOptions:
    """size 0: native size (every image must have it); ``crop``: the shorter side to ``size``, then
    a centred square crop; ``stretch``: exactly ``size`` x ``size``."""

    size: int = 0
    mode: str = "crop"
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise DMLBenchError(f"resize_mode={self.mode!r} is not one of: {', '.join(RESIZE_MODES)}")
        if not 0 <= self.size <= 4096:
            raise DMLBenchError(f"resize={self.size} must be between 0 (native size) and 4096")

    @property
    def channels(self) -> int:
        """1 for grayscale, else 3 (RGB)."""
        return 1 if self.grayscale else 3

    def key(self) -> str:
        """The options in a file name, e.g. ``s64-crop-RGB``: part of a decode cache's identity."""
        return f"s{self.size}-{self.mode}-{'L' if self.grayscale else 'RGB'}"


@dataclass
class Scan:
    """The images found below a folder, and how many hidden and non-image files were skipped."""

    files: list[str]  # full paths, as strings: a Path per file costs seconds on a 50,000-file tree
    hidden: int = 0
    not_images: int = 0
    parts: list[tuple[str, ...]] = field(default_factory=list)  # each file's path below the root, split

    def report(self, root: Path) -> None:
        """Log a warning with the counts of skipped files, if any were skipped."""
        if self.hidden or self.not_images:
            log.warning("%s: skipped %d hidden file(s) and %d non-image file(s)", root, self.hidden, self.not_images)


def is_image_name(name: str) -> bool:
    """Whether a file name is not hidden and has an image suffix (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def scan(root: Path) -> Scan:
    """Every image below ``root``, sorted by path components, skipping hidden files and folders
    and non-images."""
    out = Scan([])
    top = os.fspath(root)
    found: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            if d.startswith("."):
                out.hidden += sum(len(f) for _, _, f in os.walk(os.path.join(dirpath, d)))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, top)
        prefix = () if rel == os.curdir else tuple(rel.split(os.sep))
        for name in filenames:
            if name.startswith("."):
                out.hidden += 1
            elif is_image_name(name):
                found.append((*prefix, name))
            else:
                out.not_images += 1
    found.sort()
    out.parts = found
    out.files = [os.path.join(top, *p) for p in found]
    return out


def decode(path: Path, opts: DecodeOptions) -> np.ndarray:
    """One image as uint8 (C, H, W)."""
    from PIL import Image

    mode = "L" if opts.grayscale else "RGB"
    with Image.open(path) as im:
        if opts.size:
            im.draft(mode, (opts.size, opts.size))  # JPEG: decode at the smallest scale >= the target
        if im.mode != mode:
            im = im.convert(mode)
        if opts.size:
            w, h = im.size
            if opts.mode == "stretch":
                im = im.resize((opts.size, opts.size), Image.BILINEAR, reducing_gap=2.0)
            else:  # the centred square of side min(w, h), resized in one step (no pixels made to be cropped)
                side = min(w, h)
                left, top = (w - side) / 2, (h - side) / 2
                im = im.resize((opts.size, opts.size), Image.BILINEAR, box=(left, top, left + side, top + side),
                               reducing_gap=2.0)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _decode_chunk(args) -> list[tuple[int, str]]:
    """Decode files[start:stop] into the mapped output; returns (index, reason) of unreadable ones."""
    out_path, shape, files, start, opts = args
    out = np.lib.format.open_memmap(out_path, mode="r+")
    bad = []
    for i, f in enumerate(files, start):
        try:
            a = decode(Path(f), opts)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any file Pillow cannot turn into pixels is an unreadable image
            # (UnidentifiedImageError, OSError for a truncated file, DecompressionBombError, SyntaxError, ...)
            bad.append((i, f"{type(e).__name__}: {e}".splitlines()[0][:200]))
            continue
        if a.shape != tuple(shape[1:]):
            bad.append((i, f"size {a.shape[1]}x{a.shape[2]}, not {shape[2]}x{shape[3]}: set data.resize"))
            continue
        out[i] = a
    out.flush()
    del out
    return bad


def workers() -> int:
    """Decode processes to start: the CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def decode_into(out_path: Path, files: Sequence[str | os.PathLike], opts: DecodeOptions,
                n_workers: int | None = None) -> list[tuple[int, str]]:
    """Decode ``files`` into the .npy at ``out_path`` (already allocated with their shape), using
    ``n_workers`` processes; returns the unreadable files as (index, reason)."""
    shape = np.load(out_path, mmap_mode="r").shape
    if n_workers is None:
        # Starting a pool costs a few tenths of a second; a small folder decodes faster than that.
        n_workers = 1 if len(files) < SERIAL_BELOW else workers()
    chunk = max(64, min(2048, -(-len(files) // (n_workers * 8))))
    jobs = [(str(out_path), shape, [os.fspath(f) for f in files[s:s + chunk]], s, opts)
            for s in range(0, len(files), chunk)]
    bad: list[tuple[int, str]] = []
    if n_workers == 1 or len(jobs) == 1:
        for j in jobs:
            bad += _decode_chunk(j)
        return bad
    import multiprocessing

    # forkserver/spawn, never fork: the parent may hold torch or BLAS threads.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
        for b in pool.map(_decode_chunk, jobs):
            bad += b
    return bad
