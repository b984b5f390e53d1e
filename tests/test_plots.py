"""`bench plot` on a tiny digits results folder writes every figure as a real PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.running.config import RunConfig
from dmlbench.running.execute import run_suite
from dmlbench.running.suite import Suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    base = RunConfig(dataset="digits", epochs=2, test_triplets=1000, threads=1)
    run_suite(Suite(base, ["vae", "tvae"], [0, 1], {}, out))
    # A second TVAE configuration, so the trade-off plot has two triplet weights.
    run_suite(Suite(base, ["tvae"], [0, 1], {"tvae": {"weights.triplet": "10"}}, out))
    return out


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is only {len(data)} bytes"


def test_plot_writes_every_figure(results, monkeypatch):
    monkeypatch.setattr("dmlbench.report.plots.figures.TSNE_MAX_POINTS", 200)  # t-SNE on a small subsample, for speed
    r = CliRunner().invoke(app, ["plot", str(results), "--threads", "1"])
    assert r.exit_code == 0, r.output
    folder = results / "digits" / "plots"
    expected = {"embeddings.png", "reconstructions.png", "loss_curves.png", "metrics.png", "tradeoff.png",
                "confusion_vae.png", "confusion_tvae.png", "confusion_tvae-weights.triplet-10.png"}
    printed = {Path(line.strip()) for line in r.output.splitlines() if line.strip()}
    assert printed == {folder / name for name in expected}
    for path in printed:
        _check_png(path)


def test_plot_out_folder_and_pca(results, tmp_path):
    out = tmp_path / "figs"
    r = CliRunner().invoke(app, ["plot", str(results / "digits"), "--out", str(out), "--projection", "pca",
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    _check_png(out / "embeddings.png")
    assert (out / "tradeoff.png").exists()


def test_plot_without_runs_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error:") and len(r.output.strip().splitlines()) == 1


def test_plot_unknown_projection(results):
    r = CliRunner().invoke(app, ["plot", str(results), "--projection", "umap"])
    assert r.exit_code == 2 and "tsne" in r.output
