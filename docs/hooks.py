"""MkDocs hook: a source tree whose folders equal dmlbench's modules, for mkdocstrings.

The package maps ``bench/`` to ``dmlbench``, ``methods/`` to ``dmlbench.methods`` and
``datasets/`` to ``dmlbench.data``; griffe (mkdocstrings' reader) follows folders, so the API
reference reads a mirror of links in ``build/docs-src/dmlbench`` made here, before any page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT / "build" / "docs-src"


def make_mirror() -> None:
    pkg = MIRROR / "dmlbench"
    shutil.rmtree(MIRROR, ignore_errors=True)
    pkg.mkdir(parents=True)
    for item in (ROOT / "bench").iterdir():
        if item.name != "__pycache__":
            os.symlink(item, pkg / item.name)
    os.symlink(ROOT / "methods", pkg / "methods")
    os.symlink(ROOT / "datasets", pkg / "data")


# Made when MkDocs loads this hook, while it reads mkdocs.yml: mkdocstrings drops a search path
# that does not exist yet when its own on_config runs, which is before any hook's, so a first
# build from a fresh clone would not find the package.
make_mirror()


def on_config(config, **kwargs):
    make_mirror()  # again, for `mkdocs serve` rebuilds after a module was added
    return config
