"""The docs' examples, run as written: each page's Python block is saved under its file name and
its `bench` commands run (with a tiny budget appended), so the pages cannot drift from the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmlbench.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
TINY = ["--steps", "3", "--test-triplets", "60", "--threads", "1"]


def blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def commands(page: str) -> list[list[str]]:
    out = []
    for block in blocks(page, "bash"):
        text = block.replace("\\\n", " ")
        out += [shlex.split(line) for line in text.splitlines() if line.startswith("bench ")]
    return out


@pytest.fixture
def registries():
    """Leave the registries as they were: a doc example registers a method, dataset or metric."""
    from dmlbench.blocks.encoders import ENCODERS
    from dmlbench.data.base import DATASETS
    from dmlbench.evaluation.metrics import METRICS
    from dmlbench.executors import EXECUTORS
    from dmlbench.methods.base import METHODS

    before = {r: set(r.names()) for r in (DATASETS, METHODS, METRICS, EXECUTORS, ENCODERS)}
    yield
    for r, names in before.items():
        for n in set(r.names()) - names:
            r.remove(n)


LISTED = {"plugins.md": ("center-contrast", "margin ~ log-uniform[0.1, 4]"),
          "add-executor.md": ("fresh", "One fresh process"),
          "add-encoder.md": ("mynet", "global average pool, linear to the embedding")}


@pytest.mark.parametrize("page, filename", [("plugins.md", "center_contrast.py"), ("add-dataset.md", "rings.py"),
                                            ("add-metric.md", "alignment.py"), ("add-executor.md", "fresh.py"),
                                            ("add-encoder.md", "my_trunk.py")])
def test_doc_example_runs_as_written(page, filename, tmp_path, monkeypatch, registries):
    (code,) = blocks(page, "python")
    (tmp_path / filename).write_text(code)
    monkeypatch.chdir(tmp_path)
    cmds = commands(page)
    assert cmds and any(filename in c for c in cmds)
    for argv in cmds:
        args = argv[1:]
        if args[0] == "run":
            args = args + TINY
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (argv, r.stdout, r.stderr, r.exception)
        if args[0] == "table":
            assert "alignment" in r.stdout
        if args[0] == "list":
            assert all(text in r.stdout for text in LISTED[page]), r.stdout
    assert list((tmp_path / "results").rglob("metrics.json"))
