"""The data a run sees: loaded once per process for every run that shares it, the shape its
encoder takes, and the fixed test triplets every run of a suite scores (imports no torch until
triplets are drawn)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from dmlbench.blocks.encoders import is_timm
from dmlbench.core.io import CorruptFileError, read_npy, write_npy
from dmlbench.data import load_dataset
from dmlbench.running.config import RunConfig


def data_key(cfg: RunConfig) -> tuple:
    """What identifies the data a run sees (its loaded Data is shared by runs with the same key)."""
    return (cfg.dataset, cfg.data_dir, cfg.split, cfg.data_seed, json.dumps(cfg.data_options, sort_keys=True),
            cfg.normalize)


@functools.lru_cache(maxsize=2)
def _load(key: tuple):
    dataset, data_dir, split, seed, options, normalize = key
    return load_dataset(dataset, data_dir=data_dir or None, split=split, seed=seed, options=json.loads(options),
                        normalize=normalize)


def load_data(cfg: RunConfig):
    """The run's Data, loaded once per process for every run that shares it."""
    return _load(data_key(cfg))


def input_shape(cfg: RunConfig, data_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The shape the encoder sees: ``image_size``, else a timm trunk's input size, else the data's."""
    c = data_shape[0]
    if cfg.image_size:
        return (c, cfg.image_size, cfg.image_size)
    if cfg.encoder and is_timm(cfg.encoder):
        from dmlbench.blocks.trunks import default_input_size  # heavy: torch and timm, only for a timm trunk

        return (c, *default_input_size(cfg.encoder))
    return tuple(data_shape)


def triplets_path(suite: Path, cfg: RunConfig, n_test: int) -> Path:
    """Where a suite keeps the fixed test triplets of one dataset, split and triplet seed."""
    key = f"{cfg.split}-d{cfg.data_seed}-n{cfg.test_triplets}-s{cfg.triplet_seed}-t{n_test}"
    if ":" in cfg.dataset or cfg.data_options:
        # User data: two files can share a name and a test size, so the key names the source.
        src = json.dumps([cfg.dataset, cfg.data_options], sort_keys=True)
        key += "-" + hashlib.sha1(src.encode()).hexdigest()[:8]
    return Path(suite) / f"test_triplets-{key}.npy"


def stored_test_triplets(data, cfg: RunConfig, suite: Path) -> np.ndarray | None:
    """The suite's stored test triplets for this dataset and split, checked against it; None when
    none are stored yet. Imports no torch (a driver checks them before handing out runs)."""
    y = data.test.y
    path = triplets_path(suite, cfg, len(y))
    if not path.exists():
        return None
    t = read_npy(path, fix="delete it to draw new triplets")
    ok = t.ndim == 2 and t.shape == (cfg.test_triplets, 3) and 0 <= t.min() and t.max() < len(y)
    if ok:
        yt = y[t]
        ok = bool(np.all(yt[:, 0] == yt[:, 1]) and np.all(yt[:, 0] != yt[:, 2]))
    if not ok:
        raise CorruptFileError(path, "does not match this dataset's test split; delete it to draw new triplets")
    return t


def test_triplets(data, cfg: RunConfig, suite: Path) -> np.ndarray:
    """The fixed test triplets of this dataset and split, stored in the suite so every run and every
    re-run scores the same triplets. The first run to need them draws them (seeded; runs that race
    write the same bytes, atomically)."""
    t = stored_test_triplets(data, cfg, suite)
    if t is not None:
        return t
    import torch

    from dmlbench.blocks.sampling import ClassIndex, random_triplets  # heavy: torch

    gen = torch.Generator().manual_seed(cfg.triplet_seed)
    y = torch.from_numpy(data.test.y)
    part = "validation" if data.split == "validation" else "test"  # a tune's fold scores on validation
    t = random_triplets(y, cfg.test_triplets, gen, ClassIndex(y, part)).numpy()
    write_npy(triplets_path(suite, cfg, len(data.test.y)), t)
    return t
