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


def on_config(config, **kwargs):
    pkg = MIRROR / "dmlbench"
    shutil.rmtree(MIRROR, ignore_errors=True)
    pkg.mkdir(parents=True)
    for item in (ROOT / "bench").iterdir():
        if item.name != "__pycache__":
            os.symlink(item, pkg / item.name)
    os.symlink(ROOT / "methods", pkg / "methods")
    os.symlink(ROOT / "datasets", pkg / "data")
    return config
