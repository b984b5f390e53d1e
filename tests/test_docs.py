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


REPO = DOCS.parent
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _page_blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def test_the_python_api_page_runs_as_a_notebook(tmp_path, monkeypatch):
    """Each cell of docs/python-api.md in order, in one namespace, in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {}
    for cell in blocks("python-api.md", "python"):
        exec(compile(cell, "python-api.md", "exec"), namespace)  # noqa: S102 - the page's own code
    assert (tmp_path / "map_at_r.png").stat().st_size > 1000
    assert set(namespace["runs"]["method"]) >= {"siamese", "triplet-hinge", "raw"}


def test_the_readme_examples_run(tmp_path, monkeypatch, registries):
    """The README's loss in ten lines runs as a plugin next to a built-in loss, and its Python
    snippet runs as written."""
    monkeypatch.chdir(tmp_path)
    snippet, plugin = _page_blocks(REPO / "README.md", "python")
    (tmp_path / "soft_triplet.py").write_text(plugin)
    r = CliRunner().invoke(app, ["run", "--plugin", "soft_triplet.py", "--methods", "soft-triplet,triplet-hinge",
                                 *TINY])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert re.search(r"\| digits \| soft-triplet( \*)? \|", r.stdout)      # " *": run from uncommitted code
    namespace: dict = {}
    exec(compile(snippet.replace("epochs=2", "steps=3"), "README.md", "exec"), namespace)  # noqa: S102


def _every_command() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for block in _page_blocks(page, "bash"):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                if line.strip().startswith("bench "):
                    out.append((page.name, shlex.split(line, comments=True)[1:]))
    return out


@pytest.mark.parametrize("page, args", _every_command(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_documented_command_is_one_the_cli_takes(page, args, monkeypatch):
    """Every `bench` line of the README and the docs parses: its command, options and values are
    the CLI's (the library calls are replaced by recorders, so nothing runs or is read)."""
    import pandas as pd

    from dmlbench import api

    calls = []
    frame = pd.DataFrame({"status": ["done"]})
    frame.attrs.update(table="", suite_dir=".")
    monkeypatch.setattr(api, "run", lambda **kw: calls.append(kw) or frame)
    monkeypatch.setattr(api, "tune", lambda **kw: calls.append(kw) or {"methods": {}, "suite_dir": "."})
    # The CLI imports each library function when its command runs, so the recorders replace them
    # where they live.
    from dmlbench import catalog
    from dmlbench.data import idx
    from dmlbench.report import build, compare, table
    from dmlbench.report.plots import figures
    from dmlbench.tune import summary

    monkeypatch.setattr(summary, "summary_table", lambda doc: "")
    for module, name in ((table, "table_text"), (compare, "compare_report"), (figures, "plot_results"),
                         (build, "build_report"), (catalog, "catalog")):
        monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(a) or [])
    monkeypatch.setattr(idx, "download", lambda *a: calls.append(a) or ".")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and calls, (page, args, r.stdout, r.stderr, r.exception)


def test_the_readme_and_docs_numbers_come_from_their_files():
    """Tables marked as generated equal what the committed results give today."""
    from dmlbench.report.fill import fill

    assert fill(PAGES, REPO, check=True) == []


def test_no_page_names_a_path_outside_the_repository():
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text and "/work/" not in text, page


@pytest.mark.skipif(not __import__("importlib").util.find_spec("mkdocs") and not __import__("os").environ.get(
    "DMLBENCH_REQUIRE_DOCS"), reason="mkdocs is not installed (pip install -e '.[docs]'); CI builds the site")
def test_the_docs_site_builds_strictly(tmp_path):
    import shutil
    import subprocess
    import sys

    # As on a fresh clone: the API reference's source mirror (docs/hooks.py) is not there yet.
    shutil.rmtree(REPO / "build" / "docs-src", ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "index.html").is_file()
