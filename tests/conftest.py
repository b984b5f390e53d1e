"""Shared fixtures.

Real MNIST is found through $DMLBENCH_DATA_DIR (a folder holding ``mnist/``). Where it is absent the
tests that need it skip with the reason; with DMLBENCH_REQUIRE_DATA=1 (as .ci/run sets) they fail
instead, so CI cannot go green by skipping them.

``mnist`` and ``digits`` are :class:`dmlbench.data.Data`: uint8 images (N, C, H, W) read through
``data.train.images()``, int64 labels ``data.train.y``, and ``data.scale`` turning stored values into
[0, 1] (1/255 for MNIST, 1/16 for the digits).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: 2 threads on 2 shared cores are 10-20x slower

REQUIRE_DATA = os.environ.get("DMLBENCH_REQUIRE_DATA") == "1"


def _missing(reason: str):
    if REQUIRE_DATA:
        pytest.fail(f"{reason} (DMLBENCH_REQUIRE_DATA=1 forbids skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data folder that holds the real MNIST (``<data_dir>/mnist/*.gz``)."""
    env = os.environ.get("DMLBENCH_DATA_DIR")
    if not env:
        _missing("real MNIST not configured: set DMLBENCH_DATA_DIR to a folder with mnist/ (e.g. ../shared/data)")
    path = Path(env).expanduser()
    if not (path / "mnist" / "train-images-idx3-ubyte.gz").is_file() and not (path / "mnist" / "train-images-idx3-ubyte").is_file():
        _missing(f"real MNIST not found in {path / 'mnist'}")
    return path


@pytest.fixture(scope="session")
def mnist(data_dir):
    """The real MNIST, MD5-checked: uint8 (60000, 1, 28, 28) / (10000, 1, 28, 28), scale 1/255."""
    from dmlbench.data import load_dataset

    return load_dataset("mnist", data_dir=data_dir)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, seed 0: uint8 values 0..16 (1257 / 540 images), scale 1/16."""
    from dmlbench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _plugins_stay_in_their_test():
    """A test's --plugin modules (CLI commands run in this process) are not re-imported by the
    workers of a later test: each bench command is a fresh process for a user."""
    from dmlbench.core.registry import LOADED_PLUGINS

    before = list(LOADED_PLUGINS)
    yield
    LOADED_PLUGINS[:] = before


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Decode caches go to the user's cache folder: in a test, a temporary one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
