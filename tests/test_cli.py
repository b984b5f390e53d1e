"""The ``bench`` command line end to end on digits, the results store and the table.

Everything runs in-process through typer's CliRunner (stdout and stderr are kept apart), on the
bundled digits data with 1-4 epochs, so the whole file stays small.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.evaluation.metrics import METRICS
from dmlbench.methods import BUILTIN
from dmlbench.report.table import SPREADS

REPO = Path(__file__).resolve().parents[1]
N_TEST, N_TRAIN = 540, 1257  # digits: 1797 images, stratified 70/30 split
N_TRIPLETS = 300
RUN_FILES = ("config.json", "history.csv", "metrics.json", "embeddings.npz", "checkpoint.pt")


def bench(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def one_line(text: str) -> str:
    """Help text as one line: the panels' box-drawing borders and the wrapping taken out (a
    panel's columns can split a phrase across lines only where the text wraps, and a table column
    holds one option's help, so its words stay in order)."""
    import re

    rows = [re.sub(r"^[\s│╭╰─┬┴]*|[\s│╮╯─]*$", "", line) for line in text.splitlines()]
    return " ".join(" ".join(rows).split())


def run_dirs(out: Path, method: str, dataset: str = "digits") -> list[Path]:
    return sorted((out / dataset / method).glob("s*-*"))


def md_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Parse a markdown table: (header, {method: cells}) (cells with ** kept)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    header, body = split[0], [r for r in split[1:] if not set("".join(r)) <= set("-: ")]
    # " *" marks rows made from uncommitted code: every row of a test run in a working tree with changes
    return header, {r[header.index("method")].removesuffix(" *"): r for r in body}


def cell_numbers(cell: str) -> tuple[float, float]:
    mean, std = cell.strip("*").split("±")
    return float(mean), float(std)


# --------------------------------------------------------------------------------------------
# One suite, shared: triplet-hinge and vae (raw added), seeds 0 and 1, 2 epochs.
# --------------------------------------------------------------------------------------------

SUITE_ARGS = ["--methods", "triplet-hinge,vae", "--seeds", "0,1", "--epochs", "2", "--test-triplets", N_TRIPLETS,
              "--threads", "1"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "results"
    result = bench("run", *SUITE_ARGS, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out, result


def test_run_prints_table_with_every_method_and_raw(suite):
    out, result = suite
    header, rows = md_rows(result.stdout)
    assert header[:3] == ["dataset", "method", "seeds"]
    assert set(rows) == {"triplet-hinge", "vae", "raw"}
    assert all(r[0] == "digits" and r[2] == "2" for r in rows.values())
    assert list(rows)[-1] == "raw"  # the floor goes last
    # Tables to stdout, progress to stderr.
    assert "[1/6]" not in result.stdout and "running" not in result.stdout
    for i in range(1, 7):
        assert f"[{i}/6]" in result.stderr
    assert "| method" not in result.stderr


def test_run_folders_hold_every_file(suite):
    out, _ = suite
    for method, dim in (("triplet-hinge", 20), ("vae", 20), ("raw", 64)):
        dirs = run_dirs(out, method)
        assert [d.name.split("-")[0] for d in dirs] == ["s0", "s1"]
        for d in dirs:
            for f in RUN_FILES:
                if f == "checkpoint.pt" and method == "raw":
                    continue  # nothing trained, nothing to resume
                assert (d / f).is_file(), d / f
            assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))
            cfg = json.loads((d / "config.json").read_text())
            assert cfg["method"] == method and f"s{cfg['seed']}" == d.name.split("-")[0]
            # The budget is a step count (2 epochs of 1257 // 128 = 9 steps); raw is not trained.
            assert cfg["steps"] == (0 if method == "raw" else 18) and cfg["dataset"] == "digits"
            assert d.name.endswith(cfg["run_id"])
            prov = cfg["provenance"]
            v = prov["versions"]
            # torch's own version string, with its build tag (+cpu, +cu130), and the CUDA it was built with
            assert v["torch"] == torch.__version__ and v["numpy"] == np.__version__
            assert v.get("torch_cuda") == torch.version.cuda
            for key in ("faiss-cpu", "scikit-learn", "pytorch-metric-learning", "python", "dmlbench"):
                assert v[key], key
            assert len(prov["code_hash"]) == 16 and prov["device"]["device"] == "cpu" and prov["threads"] == 1

            z = np.load(d / "embeddings.npz")
            assert set(z.files) == {"test_emb", "test_y", "train_emb", "train_y", "test_triplets"}
            assert z["test_emb"].shape == (N_TEST, dim) and z["train_emb"].shape == (N_TRAIN, dim)
            assert z["test_y"].shape == (N_TEST,) and z["train_y"].shape == (N_TRAIN,)
            t = z["test_triplets"]
            assert t.shape == (N_TRIPLETS, 3) and np.issubdtype(t.dtype, np.integer)
            y = z["test_y"]
            assert np.all(y[t[:, 0]] == y[t[:, 1]]) and np.all(y[t[:, 0]] != y[t[:, 2]])
            assert len(set(map(tuple, t[:, :2]))) > 1 and np.all(t[:, 0] != t[:, 1])

            if method != "raw":
                ckpt = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
                assert ckpt["epoch"] == 2 and ckpt["step"] == 18


def test_history_has_one_row_per_epoch_with_every_loss_term(suite):
    out, _ = suite
    for method, terms in (("triplet-hinge", ["triplet"]), ("vae", ["recon", "kl"])):
        for d in run_dirs(out, method):
            h = pd.read_csv(d / "history.csv")
            assert list(h["epoch"]) == [1, 2]
            for col in terms + ["loss", "lr", "seconds"]:
                assert col in h.columns and h[col].notna().all(), col
            # Default weights are all 1, and the epoch means are linear: loss = sum of the terms.
            np.testing.assert_allclose(h["loss"], h[terms].sum(axis=1), rtol=1e-5)
            assert np.allclose(h["lr"], 1e-3)
            ckpt = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
            assert [r["epoch"] for r in ckpt["history"]] == [1, 2]
            assert list(h["step"]) == [9, 18]


def test_metrics_json_agrees_with_saved_embeddings(suite):
    """Recompute two metrics from embeddings.npz with plain numpy (independent of faiss)."""
    out, _ = suite
    expected_keys = {"triplet_acc", "triplet_acc_margin", "recall@1", "recall@2", "recall@4", "recall@8",
                     "precision@1", "map@r", "knn_acc", "svm_acc", "embedding_dim"}
    for method in ("triplet-hinge", "vae", "raw"):
        for d in run_dirs(out, method):
            m = json.loads((d / "metrics.json").read_text())
            assert expected_keys <= set(m)
            assert ({"recon_error", "elbo"} <= set(m)) == (method == "vae")
            z = np.load(d / "embeddings.npz")
            e, y, t = z["test_emb"].astype(np.float64), z["test_y"], z["test_triplets"]
            d_ap = np.linalg.norm(e[t[:, 0]] - e[t[:, 1]], axis=1)
            d_an = np.linalg.norm(e[t[:, 0]] - e[t[:, 2]], axis=1)
            assert m["triplet_acc"] == pytest.approx(np.mean(d_ap < d_an), abs=1.5 / N_TRIPLETS)
            assert m["triplet_acc_margin"] == pytest.approx(np.mean(d_ap + 1.0 <= d_an), abs=1.5 / N_TRIPLETS)
            dist = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
            np.fill_diagonal(dist, np.inf)
            nn1 = dist.argmin(1)
            assert m["recall@1"] == pytest.approx(np.mean(y[nn1] == y), abs=2.5 / N_TEST)
            assert m["embedding_dim"] == e.shape[1]
            for k in ("recall@1", "recall@8", "map@r", "knn_acc", "svm_acc"):
                assert 0.0 < m[k] <= 1.0
            assert m["recall@1"] <= m["recall@2"] <= m["recall@4"] <= m["recall@8"]


def test_tables_written_next_to_results(suite):
    out, result = suite
    md = (out / "digits" / "table.md").read_text()
    assert result.stdout.strip() == md.strip()
    csv = pd.read_csv(out / "digits" / "table.csv")
    assert set(csv["method"]) == {"triplet-hinge", "vae", "raw"}
    assert list(csv["n"]) == [2, 2, 2]


def _seed_values(out: Path, method: str, metric: str) -> np.ndarray:
    return np.array([json.loads((d / "metrics.json").read_text())[metric] for d in run_dirs(out, method)])


def test_table_aggregates_mean_and_std_over_seeds(suite):
    out, _ = suite
    result = bench("table", out / "digits", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    from io import StringIO

    agg = pd.read_csv(StringIO(result.stdout)).set_index("method")
    for method in ("triplet-hinge", "vae", "raw"):
        assert agg.loc[method, "n"] == 2
        for metric in ("triplet_acc", "recall@1", "map@r", "knn_acc", "svm_acc"):
            vals = _seed_values(out, method, metric)
            assert agg.loc[method, metric] == pytest.approx(np.mean(vals), abs=1e-12)
            assert agg.loc[method, metric + "_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    vals = _seed_values(out, "vae", "recon_error")
    assert agg.loc["vae", "recon_error"] == pytest.approx(np.mean(vals))
    assert math.isnan(agg.loc["triplet-hinge", "recon_error"])


def test_table_markdown_bolds_the_best(suite):
    out, _ = suite
    result = bench("table", out / "digits")
    assert result.exit_code == 0, result.stderr
    header, rows = md_rows(result.stdout)
    for metric in ("triplet_acc", "recall@1", "map@r", "knn_acc", "svm_acc"):
        col = header.index(metric)
        means = {m: np.mean(_seed_values(out, m, metric)) for m in rows}
        best = max(means, key=means.get)
        for m, cells in rows.items():
            mean, half = cell_numbers(cells[col])
            vals = _seed_values(out, m, metric)
            assert mean == pytest.approx(means[m], abs=5e-5)
            # ± is the half-width of the 95% Student-t interval over the 2 seeds.
            expect = scipy.stats.t.ppf(0.975, 1) * np.std(vals, ddof=1) / np.sqrt(2)
            assert half == pytest.approx(expect, abs=5e-5)
            if m == best:
                assert cells[col].startswith("**"), (metric, m, cells[col])
            elif not cells[col].startswith("**"):
                # Not bold only where a paired t-test against the best rejects (2 seeds: p < 0.05
                # needs a near-constant difference) and the row is behind on every seed.
                p = scipy.stats.ttest_rel(vals, _seed_values(out, best, metric)).pvalue
                assert p < 0.05 * (len(rows) - 1), (metric, m, p)
    # recon_error: only vae has it, so nothing to compare against and no bold.
    col = header.index("recon_error")
    assert rows["raw"][col] == "—" and not rows["vae"][col].startswith("**")


def test_table_latex_and_metric_selection(suite):
    out, _ = suite
    result = bench("table", out / "digits", "--format", "latex", "--metrics", "recall@1,knn_acc")
    assert result.exit_code == 0, result.stderr
    tex = result.stdout
    assert r"\begin{tabular}" in tex and r"\textbf{" in tex
    assert "recall@1" in tex and r"knn\_acc" in tex and "map@r" not in tex
    v = _seed_values(out, "triplet-hinge", "knn_acc")
    half = scipy.stats.t.ppf(0.975, 1) * np.std(v, ddof=1) / np.sqrt(2)
    assert rf"{np.mean(v):.4f} $\pm$ {half:.4f}" in tex and "±" not in tex

    result = bench("table", out / "digits", "--metrics", "map@r")
    header, rows = md_rows(result.stdout)
    assert header == ["dataset", "method", "seeds", "steps", "map@r"]
    result = bench("table", out / "digits", "--metrics", "all")
    header, _ = md_rows(result.stdout)
    assert {"recall@2", "recall@8", "precision@1", "elbo"} <= set(header)


@pytest.mark.parametrize("args, message", [
    (["--metrics", "recall@3"], "unknown metric(s) recall@3"),
    (["--format", "html"], "unknown table format 'html'"),
])
def test_table_bad_options_are_one_line_errors(suite, args, message):
    out, _ = suite
    result = bench("table", out / "digits", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_rerun_skips_complete_runs(suite):
    out, _ = suite
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "digits").rglob("*")
              if p.is_file() and p.parent.name.startswith("s") and p.name != ".lock"}
    assert len(before) >= 6 * len(RUN_FILES)
    result = bench("run", *SUITE_ARGS, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count(": skipped") == 6
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}
    assert after == before
    _, rows = md_rows(result.stdout)
    assert set(rows) == {"triplet-hinge", "vae", "raw"}


# --------------------------------------------------------------------------------------------
# Resume after a crash, stray temp files, failed runs
# --------------------------------------------------------------------------------------------

RESUME_ARGS = ["--methods", "vae", "--seeds", "0", "--epochs", "4", "--test-triplets", "100", "--threads", "1"]


def test_resume_continues_from_the_last_checkpoint(tmp_path, monkeypatch):
    from dmlbench.training.trainer import Trainer

    out = tmp_path / "results"
    real_save = Trainer._save

    def crash_after_epoch_2(self, epoch, opt, sched):
        real_save(self, epoch, opt, sched)
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")  # an interruption, not a failure of the run

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save", crash_after_epoch_2)
        result = bench("run", *RESUME_ARGS, "--out", out)
    assert result.exit_code != 0
    (run,) = run_dirs(out, "vae")
    assert not (run / "metrics.json").exists() and not (run / "embeddings.npz").exists()
    assert not (run / "failed.json").exists()
    crashed = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert crashed["epoch"] == 2 and len(crashed["history"]) == 2
    # A half-written metrics file left by a crash mid-write must not count as a result.
    (run / ".metrics.json.abc123.tmp").write_text(json.dumps({"triplet_acc": 1.0}))
    result = bench("table", out)
    assert result.exit_code == 2 and "no complete runs" in result.stderr

    saved = []

    def spy(self, epoch, opt, sched):
        saved.append(epoch)
        real_save(self, epoch, opt, sched)

    monkeypatch.setattr(Trainer, "_save", spy)
    result = bench("run", *RESUME_ARGS, "--out", out)
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert run_dirs(out, "vae") == [run]
    assert "skipped" not in result.stderr.split("vae seed 0")[1].splitlines()[0]
    assert saved == [3, 4]  # only the remaining epochs were trained
    final = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 4
    h = pd.read_csv(run / "history.csv")
    assert list(h["epoch"]) == [1, 2, 3, 4]
    # Epochs 1-2 are the ones from before the crash (their wall-clock seconds too: not re-trained).
    for col in ("recon", "kl", "loss", "seconds"):
        np.testing.assert_allclose(h[col][:2], [r[col] for r in crashed["history"]], rtol=1e-12)
    assert (run / "metrics.json").is_file() and (run / "embeddings.npz").is_file()

    # The resumed run trains exactly like an uninterrupted one (model, optimiser and RNG restored).
    monkeypatch.undo()
    ref_out = tmp_path / "reference"
    assert bench("run", *RESUME_ARGS, "--out", ref_out).exit_code == 0
    (ref,) = run_dirs(ref_out, "vae")
    assert ref.name == run.name
    h_ref = pd.read_csv(ref / "history.csv")
    np.testing.assert_allclose(h[["recon", "kl", "loss"]], h_ref[["recon", "kl", "loss"]], rtol=1e-5)
    m_ref = json.loads((ref / "metrics.json").read_text())
    m_run = json.loads((run / "metrics.json").read_text())
    for k in ("triplet_acc", "recall@1", "map@r"):
        assert m_run[k] == pytest.approx(m_ref[k], abs=1e-6)


def test_stray_files_are_not_results(tmp_path):
    from dmlbench.report.table import collect

    out = tmp_path / "results"
    assert bench("run", "--methods", "raw", "--seeds", "0", "--test-triplets", "50", "--out", out).exit_code == 0
    # Leftovers of interrupted atomic writes, in a run folder of their own.
    junk = out / "digits" / "raw" / "s1-deadbeef00"
    junk.mkdir()
    (junk / ".config.json.x1.tmp").write_text(json.dumps({"method": "raw", "seed": 1}))
    (junk / ".metrics.json.x2.tmp").write_text(json.dumps({"recall@1": 1.0}))
    runs = collect(out)
    assert len(runs) == 1 and list(runs["status"]) == ["done"]
    result = bench("table", out, "--format", "csv")
    assert result.exit_code == 0
    assert pd.read_csv(__import__("io").StringIO(result.stdout))["n"].tolist() == [1]


def test_failed_run_is_recorded_and_the_suite_goes_on(tmp_path):
    # A weight of 1e39 overflows float32: the weighted total loss is inf at the first step.
    out = tmp_path / "results"
    result = bench("run", "--methods", "triplet-hinge,vae", "--seeds", "0", "--epochs", "1", "--test-triplets", "100",
                   "--threads", "1", "--set", "vae.weights.recon=1e39", "--out", out)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    (vae_dir,) = run_dirs(out, "vae")
    failed = json.loads((vae_dir / "failed.json").read_text())
    assert "non-finite" in failed["reason"] and "total" in failed["reason"]
    assert failed["type"] == "NonFiniteLossError"
    assert not (vae_dir / "metrics.json").exists()
    for method in ("triplet-hinge", "raw"):
        (d,) = run_dirs(out, method)
        assert (d / "metrics.json").is_file() and not (d / "failed.json").exists()
    assert "vae seed 0: FAILED" in result.stderr and "1 of 3 runs failed" in result.stderr
    _, rows = md_rows(result.stdout)
    assert set(rows) == {"triplet-hinge", "raw"}
    md = (out / "digits" / "table.md").read_text()
    assert "Runs left out (failed or unreadable):" in md and "vae seed 0" in md


# --------------------------------------------------------------------------------------------
# Suite files, option errors, listing, help
# --------------------------------------------------------------------------------------------

def test_config_file_with_flag_override(tmp_path):
    out = tmp_path / "results"
    suite = tmp_path / "suite.toml"
    suite.write_text(f'methods = ["raw"]\nseeds = [0, 1]\nknn-k = 3\ntest-triplets = 40\nout = "{out.as_posix()}"\n')
    result = bench("run", "--config", suite, "--knn-k", "7")
    assert result.exit_code == 0, result.stderr
    dirs = run_dirs(out, "raw")
    assert len(dirs) == 2  # seeds from the file
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["knn_k"] == 7  # the flag wins over the file's 3
        assert cfg["test_triplets"] == 40  # from the file
        assert np.load(d / "embeddings.npz")["test_triplets"].shape == (40, 3)


def test_config_file_unknown_key_is_an_error(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('methods = "raw"\nepochz = 3\n')
    result = bench("run", "--config", suite, "--out", tmp_path / "results")
    assert result.exit_code == 2
    assert "unknown key(s) epochz" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("setting, message", [
    ("vae.weigths.recon=2", "unknown option vae.weigths.recon"),
    ("vae.recon=l1", "vae.recon='l1' is not allowed"),
    ("vea.margin=1", "unknown method 'vea'"),
    ("vae-margin", "must look like METHOD.KEY=VALUE"),
])
def test_bad_set_is_a_one_line_error(tmp_path, setting, message):
    result = bench("run", "--methods", "vae", "--set", setting, "--out", tmp_path / "results")
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert errors[-1].startswith("error: ") and message in errors[-1]
    assert sum(ln.startswith("error") for ln in errors) == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "results" / "digits" / "vae").exists()


def test_misspelled_set_key_lists_the_valid_ones(tmp_path):
    result = bench("run", "--methods", "vae", "--set", "vae.weigths.recon=2", "--out", tmp_path / "r")
    assert "weights.recon" in result.stderr and "weights.kl" in result.stderr


def test_unknown_method_lists_the_known_ones(tmp_path):
    result = bench("run", "--methods", "triplet-hinge,nosuch", "--out", tmp_path / "results")
    assert result.exit_code == 2
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")][0]
    assert "nosuch" in line
    for name in (*BUILTIN, "raw"):
        assert name in line
    assert not (tmp_path / "results").exists()


def test_list_methods_datasets_metrics():
    result = bench("list", "methods")
    assert result.exit_code == 0
    listed = [ln.strip() for ln in result.stdout.splitlines() if ln.startswith("  ") and not ln.startswith("    ")]
    assert set(BUILTIN) | {"raw"} <= set(listed)
    assert "Datasets" not in result.stdout
    # Every pml: loss with its search space (the main parameters bench tune samples besides lr).
    from dmlbench.core.space import describe
    from dmlbench.methods.pml import pml_loss_names, pml_method

    spaces = {ln.split()[0]: ln.split(None, 1)[1] for ln in result.stdout.splitlines() if ln.startswith("    pml:")}
    assert set(spaces) == {f"pml:{n}" for n in pml_loss_names()}
    space = {k: d for k, d in pml_method("pml:TripletMarginLoss").Params.space.items() if k != "lr"}
    assert spaces["pml:TripletMarginLoss"] == describe(space)

    result = bench("list", "datasets")
    assert result.exit_code == 0
    names = {ln.split()[0] for ln in result.stdout.splitlines() if ln.startswith("  ") and not ln.startswith("    ")}
    assert {"digits", "mnist", "fashion-mnist", "cifar10"} <= names

    result = bench("list", "metrics")
    assert result.exit_code == 0
    rows = {ln.split()[0]: ln for ln in result.stdout.splitlines() if ln.startswith("  ")}
    assert set(rows) == set(METRICS)
    assert "lower is better" in rows["recon_error"] and "lower is better" not in rows["recall@1"]

    result = bench("list", "everything")
    assert result.exit_code == 2 and "cannot list 'everything'" in result.stderr


@pytest.mark.parametrize("command, expected", [
    ("run", ["--methods", "--dataset", "--seeds", "--epochs", "--batch-size", "--lr", "--set", "--config", "--out",
             "[default: 128]", "[default: 0.001]", "[default: digits]", "[default: 0]", "[default: results]",
             "[default: 10000]", "the raw floor is always added", "bench run --preset mnist-all --workers 2"]),
    ("tune", ["--trials", "[default: 30]", "methods that train nothing are not tuned", "bench run --tuned"]),
    ("table", ["--format", "--metrics", "[default: markdown]", "[default: results]", "markdown, csv or latex",
               "[default: the registry's default metrics]", "bench table results/mnist/mnist-all"]),
    ("list", ["methods, datasets, metrics", "[default: all]"]),
])
def test_help_shows_options_and_defaults(command, expected, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: an option's help stays on one line of its panel
    result = bench(command, "--help")
    assert result.exit_code == 0
    text = one_line(result.stdout)
    for item in expected:
        assert item in text, item
    if command == "tune":
        assert "raw" not in text.split("--methods")[1].split("--")[0]  # tune never adds the raw floor


def test_help_has_panels_examples_plain_metavars_and_uncut_summaries(monkeypatch):
    """A new user's help: options grouped in panels, examples, ordinary metavars, summaries whole,
    --version, and -v accepted after the command too."""
    monkeypatch.setenv("COLUMNS", "200")
    top = bench("--help").stdout
    assert "…" not in top and "..." not in top.split("Commands")[1]
    assert "Train and evaluate each (method, seed) on one dataset; print the table." in top
    run = bench("run", "--help").stdout
    for panel in ("Suite", "Data", "Model", "Training", "Evaluation", "Where it runs"):
        assert f"─ {panel} ─" in run, panel
    assert "<str>" not in run and "list[str]" not in run and "adam|adamw|sgd|rmsprop" in run
    assert "METHOD.KEY=VALUE" in run and "bench run --methods tvae,siamese --dataset mnist" in run
    assert bench("--version").stdout.strip().startswith("dmlbench ")
    r = bench("table", str(REPO / "results" / "mnist" / "tvae-paper"), "-v")
    assert r.exit_code == 0 and "| tvae" in r.stdout


# --------------------------------------------------------------------------------------------
# The table on hand-made run folders (known numbers)
# --------------------------------------------------------------------------------------------

def _fake_run(root: Path, method: str, seed: int, metrics: dict | None, failed: str = "") -> None:
    d = root / "toy" / method / f"s{seed}-{method[:3]}{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"dataset": "toy", "method": method, "variant": "",
                                               "group_id": f"g-{method}", "seed": seed}))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if failed:
        (d / "failed.json").write_text(json.dumps({"reason": failed, "type": "NonFiniteLossError"}))


@pytest.fixture
def toy_results(tmp_path):
    # alpha: recall@1 0.5, 0.7, 0.9 -> 0.7 ± 0.2;  recon_error 10, 12, 14 -> 12 ± 2
    # beta:  recall@1 0.6, 0.7      -> 0.65 ± 0.0707 (√(2·0.05²)=0.070711); recon 20, 30 -> 25 ± 7.0711
    # A failed and an unfinished beta run must not change beta's numbers or its n.
    root = tmp_path / "results"
    for seed, (r, e) in enumerate([(0.5, 10), (0.7, 12), (0.9, 14)]):
        _fake_run(root, "alpha", seed, {"recall@1": r, "recon_error": e})
    for seed, (r, e) in enumerate([(0.6, 20), (0.7, 30)]):
        _fake_run(root, "beta", seed, {"recall@1": r, "recon_error": e})
    _fake_run(root, "beta", 7, None, failed="loss term(s) total became non-finite")
    _fake_run(root, "beta", 8, None)
    return root


def test_table_on_known_numbers(toy_results):
    result = bench("table", toy_results, "--format", "csv", "--metrics", "recall@1,recon_error")
    assert result.exit_code == 0, result.stderr
    from io import StringIO

    agg = pd.read_csv(StringIO(result.stdout)).set_index("method")
    assert agg.loc["alpha", "n"] == 3 and agg.loc["beta", "n"] == 2
    assert agg.loc["alpha", "recall@1"] == pytest.approx(0.7)
    assert agg.loc["alpha", "recall@1_std"] == pytest.approx(0.2)
    assert agg.loc["beta", "recall@1"] == pytest.approx(0.65)
    assert agg.loc["beta", "recall@1_std"] == pytest.approx(0.05 * math.sqrt(2))
    assert agg.loc["alpha", "recon_error"] == pytest.approx(12.0)
    assert agg.loc["alpha", "recon_error_std"] == pytest.approx(2.0)
    assert agg.loc["beta", "recon_error_std"] == pytest.approx(math.sqrt(50))

    # 95% t half-widths: alpha t(0.975, 2)·0.2/√3 = 0.4968 and 2.0 -> 4.968; beta t(0.975, 1)·0.0707/√2 = 0.6353.
    ci_a = scipy.stats.t.ppf(0.975, 2) / math.sqrt(3)
    ci_b = scipy.stats.t.ppf(0.975, 1) / math.sqrt(2)
    assert agg.loc["alpha", "recall@1_ci"] == pytest.approx(0.2 * ci_a)
    assert agg.loc["beta", "recon_error_ci"] == pytest.approx(math.sqrt(50) * ci_b)

    result = bench("table", toy_results, "--metrics", "recall@1,recon_error")
    header, rows = md_rows(result.stdout)
    assert header == ["dataset", "method", "seeds", "steps", "recall@1", "recon_error"]
    # recall@1: alpha's mean (0.70) is best, but on the seeds both have (0, 1) beta is ahead
    # (0.6, 0.7 vs 0.5, 0.7): not significantly worse, so both are bold. recon_error (lower is
    # better): beta is behind alpha by 10 and 18 on those seeds, p = 0.14 with 2 pairs: still bold.
    assert rows["alpha"][4:] == [f"**0.7000 ± {0.2 * ci_a:.4f}**", f"**12.0 ± {2 * ci_a:.1f}**"]
    assert rows["beta"][4:] == [f"**0.6500 ± {0.05 * math.sqrt(2) * ci_b:.4f}**",
                                f"**25.0 ± {math.sqrt(50) * ci_b:.1f}**"]
    assert rows["beta"][2] == "2"

    result = bench("table", toy_results, "--format", "latex", "--metrics", "recall@1,recon_error")
    assert rf"\textbf{{0.7000 $\pm$ {0.2 * ci_a:.4f}}}" in result.stdout and r"recon\_error" in result.stdout


def test_table_spread_is_selectable(toy_results):
    ci_a = scipy.stats.t.ppf(0.975, 2) / math.sqrt(3) * 0.2
    cells = {"ci": f"0.7000 ± {ci_a:.4f}", "std": "0.7000 ± 0.2000",
             "interval": f"0.7000 [{0.7 - ci_a:.4f}, {0.7 + ci_a:.4f}]", "none": "0.7000"}
    for spread, cell in cells.items():
        result = bench("table", toy_results, "--metrics", "recall@1", "--spread", spread)
        assert result.exit_code == 0, result.stderr
        header, rows = md_rows(result.stdout)
        assert rows["alpha"][4] == f"**{cell}**", spread
        assert SPREADS[spread] in result.stdout  # the legend says what follows the mean
    result = bench("table", toy_results, "--spread", "sem")
    assert result.exit_code == 2 and "--spread 'sem' is not one of: ci, std, interval, none" in result.stderr


def test_table_single_seed_is_a_lone_value_and_missing_folder_errors(tmp_path):
    root = tmp_path / "results"
    _fake_run(root, "alpha", 0, {"recall@1": 0.25})
    _fake_run(root, "beta", 0, {"recall@1": 0.5})
    result = bench("table", root, "--format", "csv", "--metrics", "recall@1")
    row = pd.read_csv(__import__("io").StringIO(result.stdout)).set_index("method").loc["alpha"]
    assert row["n"] == 1 and row["recall@1"] == 0.25 and math.isnan(row["recall@1_std"])
    header, rows = md_rows(bench("table", root, "--metrics", "recall@1").stdout)
    # One seed: no "± 0.0000", and only the best is bold (nothing can be tested).
    assert rows["alpha"][4] == "0.2500" and rows["beta"][4] == "**0.5000**"
    result = bench("table", tmp_path / "nowhere")
    assert result.exit_code == 2 and "does not exist" in result.stderr


# Regressions from an earlier review (the table)

def test_table_counts_a_config_once_across_suites_and_bolds_per_dataset(tmp_path):
    import pandas as pd

    from dmlbench.report.table import aggregate, collect, format_table

    out = tmp_path / "r"
    for suite in ("a", ""):
        args = ["run", "--methods", "triplet-hinge", "--epochs", "1", "--test-triplets", "50", "--threads", "1",
                "--out", out]
        r = bench(*args, *(["--suite", suite] if suite else []))
        assert r.exit_code == 0, r.stderr
    runs = collect(out / "digits")
    assert len(runs[runs["method"] == "triplet-hinge"]) == 2  # the same run in two folders
    agg = aggregate(runs)
    assert int(agg.loc[agg["method"] == "triplet-hinge", "n"].iloc[0]) == 1
    # Two datasets: each one's best value is bold (the best is decided within a dataset).
    runs = runs.assign(**{"recall@1": np.where(runs["method"] == "raw", 0.5, 0.9)})
    other = runs.assign(dataset="other", **{"recall@1": np.where(runs["method"] == "raw", 0.6, 0.3)})
    both = format_table(aggregate(pd.concat([runs, other], ignore_index=True), ["recall@1"]), "markdown", ["recall@1"])
    bold = [line for line in both.splitlines() if "**" in line]
    assert {(line.split("|")[1].strip(), line.split("|")[2].strip().removesuffix(" *")) for line in bold} == \
        {("digits", "triplet-hinge"), ("other", "raw")}


def test_raw_has_one_run_whatever_the_training_settings(tmp_path):
    out = tmp_path / "r"
    for epochs in ("1", "2"):
        r = bench("run", "--methods", "raw", "--epochs", epochs, "--lr", "0.01", "--test-triplets", "50",
                  "--threads", "1", "--out", out)
        assert r.exit_code == 0, r.stderr
    assert len(list((out / "digits" / "raw").iterdir())) == 1


def test_a_crashing_method_is_recorded_and_the_suite_goes_on(tmp_path):
    # A loss whose options make training blow up fails inside its run, not the whole suite.
    out = tmp_path / "r"
    r = bench("run", "--methods", "pml:ArcFaceLoss,triplet-hinge", "--set", "pml:ArcFaceLoss.scale=-1e40",
              "--epochs", "1", "--test-triplets", "50", "--threads", "1", "--out", out)
    assert r.exit_code == 1, r.stderr
    failed = list((out / "digits" / "pml-ArcFaceLoss").glob("*/failed.json"))
    assert len(failed) == 1 and json.loads(failed[0].read_text())["reason"]
    for method in ("triplet-hinge", "raw"):
        assert list((out / "digits" / method).glob("*/metrics.json")), method
    assert "Runs left out" in (out / "digits" / "table.md").read_text()


def test_generative_methods_refuse_standardised_pixels(tmp_path):
    r = bench("run", "--methods", "vae", "--normalize", "standard", "--epochs", "1", "--out", tmp_path)
    assert r.exit_code == 2 and "[0, 1]" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("args,needle", [
    (["--threads", "-1"], "threads"),
    (["--seeds", "-1"], "seeds"),
    (["--momentum", "-1"], "momentum"),
    (["--set", "triplet-hinge.mining=hard", "--set", "triplet-hinge.m=1"], "at least 2"),
])
def test_bad_values_are_one_line_errors(tmp_path, args, needle):
    r = bench("run", "--methods", "triplet-hinge", *args, "--epochs", "1", "--out", tmp_path)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.output
    assert sum(ln.startswith("error") for ln in r.stderr.splitlines()) == 1


def test_bad_toml_types_are_one_line_errors(tmp_path):
    f = tmp_path / "s.toml"
    for text in ('set = "tvae.margin=2"\n', "out = 5\n"):
        f.write_text(text)
        r = bench("run", "--config", f, "--out", tmp_path)
        assert r.exit_code == 2 and "config file" in r.stderr, r.stderr


def test_table_ignores_foreign_config_files(tmp_path):
    from dmlbench.report.table import collect

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"something": "else"}))
    assert len(collect(tmp_path)) == 0


@pytest.mark.parametrize("argv", [["list"], ["list", "methods"], ["plot", "--help"], ["run", "--help"],
                                  ["tune", "--help"], ["table", "RESULTS"], ["compare", "RESULTS", "--metric", "recall@1"]])
def test_commands_that_train_nothing_import_neither_torch_nor_faiss(argv, suite):
    from helpers_cli import run_fresh

    out, _ = suite
    run_fresh([str(out) if a == "RESULTS" else a for a in argv], forbidden=("torch", "faiss", "sklearn"), timeout=120)


def test_rows_of_one_method_that_differ_in_run_options_say_which(tmp_path):
    root = tmp_path / "results"
    for group, options in (("g1", {"lr_schedule": "cosine", "epochs": 4}), ("g2", {"lr_schedule": "none", "epochs": 4})):
        for seed in (0, 1):
            d = root / "toy" / "alpha" / f"s{seed}-{group}"
            d.mkdir(parents=True)
            (d / "config.json").write_text(json.dumps({"dataset": "toy", "method": "alpha", "variant": "",
                                                       "group_id": group, "seed": seed, **options}))
            (d / "metrics.json").write_text(json.dumps({"recall@1": 0.5 + 0.1 * seed}))
    header, rows = md_rows(bench("table", root, "--metrics", "recall@1").stdout)
    assert set(rows) == {"alpha [lr_schedule=cosine]", "alpha [lr_schedule=none]"}


def test_latex_escapes_every_special_character_of_a_label(tmp_path):
    root = tmp_path / "results"
    _fake_run(root, "alpha", 0, {"recall@1": 0.5})
    cfg = root / "toy" / "alpha" / "s0-alp0" / "config.json"
    cfg.write_text(cfg.read_text().replace('"dataset": "toy"', '"dataset": "npz:/d/a&b~c_{x}$^%#.npz"'))
    tex = bench("table", root, "--format", "latex", "--metrics", "recall@1").stdout
    assert (r"npz:/d/a\&b\textasciitilde{}c\_\{x\}\$\textasciicircum{}\%\#.npz & alpha & 1 & -- & 0.5000"
            in tex), tex


def test_run_prints_its_own_runs_and_tables_show_budgets_and_the_suites_they_mix(tmp_path):
    """bench run's table holds the runs it ran (the folder's table.md holds them all); every table
    has a steps column; rows of different budgets are never bold against each other, and the
    table says the budgets differ; bench table names the suite folders it mixes."""
    common = ["--test-triplets", "100", "--threads", "1", "--out", tmp_path]
    ok = bench("run", "--methods", "pml:MultiSimilarityLoss", "--steps", "4", *common)
    assert ok.exit_code == 0, ok.stderr
    r = bench("run", "--methods", "siamese", "--steps", "4", *common)
    assert r.exit_code == 0, r.stderr
    assert "| siamese" in r.stdout and "MultiSimilarityLoss" not in r.stdout
    assert "also holds 1 complete run(s) (pml:MultiSimilarityLoss)" in r.stderr
    folder_table = (tmp_path / "digits" / "table.md").read_text()
    assert "MultiSimilarityLoss" in folder_table and "| steps |" in folder_table
    # Another budget of siamese, in a named suite: bench table over both folders.
    r = bench("run", "--methods", "siamese", "--steps", "8", "--seeds", "0,1", "--suite", "longer", *common)
    assert r.exit_code == 0, r.stderr
    t = bench("table", tmp_path / "digits")
    assert t.exit_code == 0, t.stderr
    assert "Budgets differ (digits: 4, 8 steps): bold compares rows of the same budget only" in t.stdout
    assert "This table mixes 2 suite folders" in one_line(t.stdout)
    rows = {line.split("|")[2].strip().removesuffix(" *"): line for line in t.stdout.splitlines()
            if line.startswith("| digits")}
    assert rows["siamese [steps=8]"].split("|")[4].strip() == "8"  # the steps column
    # Each budget has its own best: the 4-step siamese is compared with the 4-step MultiSimilarity row only.
    agg_bold_4 = [lab for lab, line in rows.items() if "**" in line.split("|")[7] and "raw" not in lab]
    assert "siamese [steps=8]" in agg_bold_4 and any("steps=4" in lab or "MultiSimilarity" in lab for lab in agg_bold_4)


def test_degenerate_data_is_warned_about(tmp_path):
    """A tiny test set, a batch larger than the training set and less than a pass of steps each
    get a one-line warning (they run, but measure little)."""
    rng = np.random.default_rng(0)
    small = tmp_path / "small.npz"
    np.savez(small, x_train=rng.integers(0, 255, (200, 1, 8, 8), dtype=np.uint8), y_train=np.repeat(np.arange(4), 50),
             x_test=rng.integers(0, 255, (30, 1, 8, 8), dtype=np.uint8), y_test=np.repeat(np.arange(3), 10))
    r = bench("run", "--dataset", f"npz:{small}", "--methods", "siamese", "--steps", "2", "--batch-size", "256",
              "--test-triplets", "30", "--threads", "1", "--out", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    err = one_line(r.stderr)
    assert "has 30 images: one image moves a metric by 3.3 points" in err
    assert "batch_size=256 is larger than the 200 training images" in err
    r = bench("run", "--methods", "siamese", "--steps", "1", "--test-triplets", "100", "--threads", "1",
              "--out", tmp_path / "out2")
    assert r.exit_code == 0 and "1 step is less than one pass over the training set (9 steps of 128 images)" \
        in one_line(r.stderr)
    assert "1 steps" not in r.stderr and "mlp encoder, 1 step)" in r.stderr
