"""``bench compare`` on hand-made run folders: ranks, paired tests against scipy, Holm, the
per-query bootstrap and the critical-difference diagram over several datasets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.report.compare import compare


def _run(root, dataset, method, seed, value, per_query=None):
    d = root / dataset / method / f"s{seed}-{method[:3]}{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"method": method, "dataset": dataset, "seed": seed,
                                               "group_id": f"g-{method}", "variant": ""}))
    (d / "metrics.json").write_text(json.dumps({"map@r": value}))
    if per_query is not None:
        np.savez(d / "per_query.npz", **{"retrieval_map@r": per_query})


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    values = {"good": [0.80, 0.82, 0.81], "mid": [0.70, 0.74, 0.69], "bad": [0.40, 0.45, 0.42]}
    base = rng.uniform(0.3, 0.7, 400)
    for ds_i, ds in enumerate(["d1", "d2", "d3"]):
        for m, vals in values.items():
            for s, v in enumerate(vals):
                shift = {"good": 0.1, "mid": 0.0, "bad": -0.1}[m]
                _run(tmp_path, ds, m, s, v - 0.01 * ds_i, base + shift + rng.normal(0, 0.01, 400) if s == 0 else None)
    return tmp_path, values


def test_compare_ranks_and_paired_tests_match_scipy(results):
    root, values = results
    r = compare(root, "map@r")
    d1 = r["ranking"][r["ranking"]["dataset"] == "d1"]
    assert list(d1["method"]) == ["good", "mid", "bad"]
    pairs = r["pairs"]
    gm = pairs[(pairs["dataset"] == "d1") & (pairs["a"] == "good") & (pairs["b"] == "mid")].iloc[0]
    assert gm["p_seeds"] == pytest.approx(scipy.stats.ttest_rel(values["good"], values["mid"]).pvalue)
    # Holm over the 9 pairs: each adjusted p is at least the raw one, at most 1.
    assert (pairs["p_seeds_holm"] >= pairs["p_seeds"] - 1e-12).all() and (pairs["p_seeds_holm"] <= 1).all()
    # The per-query bootstrap sees the 0.1 shift on 400 queries; the verdict is the seeds' test's
    # (as the table's bold), with the bootstrap beside it.
    assert gm["p_queries"] < 0.01
    assert gm["significant"] == (gm["p_seeds_holm"] < 0.05)
    assert gm["verdict"].endswith("seed 0: beyond test noise")
    fr = r["friedman"]
    assert fr is not None and fr["methods"][0] == "good" and fr["cd"] > 0


def test_compare_cli_and_cd_diagram(results, tmp_path):
    root, _ = results
    png = tmp_path / "cd.png"
    res = CliRunner().invoke(app, ["compare", str(root), "--metric", "map@r", "--cd-plot", str(png)])
    assert res.exit_code == 0, res.stderr
    assert "Friedman over 3 datasets" in res.stdout and "good vs bad (d1)" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(app, ["compare", str(root), "--metric", "nope"])
    assert res.exit_code == 2 and "unknown metric 'nope'" in res.stderr
    for args, why in ((["--alpha", "2"], "between 0 and 1"), (["--alpha", "0"], "between 0 and 1"),
                      (["--metric", "triplet_acc_margin"], "never ranked")):
        res = CliRunner().invoke(app, ["compare", str(root), *args])
        assert res.exit_code == 2 and why in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    some_file = next(root.rglob("metrics.json"))
    res = CliRunner().invoke(app, ["compare", str(some_file)])
    assert res.exit_code == 2 and "is a file" in res.stderr


def test_compare_verdict_keeps_the_two_tests_apart(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.7, 500)
    # a beats b on every seed, but on seed 0's test queries b is ahead: the seeds decide.
    for s, (va, vb) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.81, 0.69), (0.83, 0.70)]):
        _run(tmp_path, "d", "a", s, va, base - 0.05 + rng.normal(0, 0.01, 500) if s == 0 else None)
        _run(tmp_path, "d", "b", s, vb, base + rng.normal(0, 0.01, 500) if s == 0 else None)
    # c and e have one seed each: only the query bootstrap can speak, and the verdict says so.
    _run(tmp_path, "one", "c", 0, 0.9, base + 0.1)
    _run(tmp_path, "one", "e", 0, 0.5, base + rng.normal(0, 0.01, 500))
    r = compare(tmp_path, "map@r")
    pairs = r["pairs"].set_index(["a", "b"])
    ab = pairs.loc[("a", "b")]
    assert ab["significant"] and ab["p_seeds_holm"] < 0.05 and ab["p_queries_holm"] < 0.05
    assert ab["verdict"] == "yes, a better; seed 0 alone favours b"
    ce = pairs.loc[("c", "e")]
    assert ce["seeds"] == 1 and ce["significant"]
    assert ce["verdict"] == "yes, c better (one seed: test-query noise only)"
    # Friedman needs every method on every dataset: none here, so it is skipped with the reason.
    assert r["friedman"] is None and r["friedman_left_out"] == ["a", "b", "c", "e"]
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--metric", "map@r"])
    assert res.exit_code == 0, res.stderr
    # the query CI's seed, then the pair's power (detectable difference, seeds needed), then the verdict
    assert re.search(r"\(seed 0\) \| [0-9.—]+ \| [0-9—]+ \| yes, a better; seed 0 alone favours b", res.stdout)
    assert "left out of the Friedman test (not run on every dataset): a, b, c, e" in res.stdout


def test_compare_says_when_there_is_nothing_to_pair_or_compare(tmp_path):
    # x and y share no seed: no paired test exists, and the verdict says why (not "one seed").
    for s in (0, 1):
        _run(tmp_path, "d", "x", s, 0.8 + 0.01 * s)
        _run(tmp_path, "d", "y", s + 2, 0.7 + 0.01 * s)
    # z has one seed (3) shared with y, whose seeds then have gaps: seeds still print as integers.
    _run(tmp_path, "d", "z", 3, 0.75, np.linspace(0, 1, 50))
    np.savez(tmp_path / "d" / "y" / "s3-y3" / "per_query.npz", **{"retrieval_map@r": np.linspace(0, 1, 50) - 0.1})
    _run(tmp_path, "lone", "w", 0, 0.5)
    r = compare(tmp_path, "map@r")
    pairs = r["pairs"].set_index(["a", "b"])
    xy = pairs.loc[("x", "y")]
    assert xy["seeds"] == 0 and not xy["significant"]
    assert xy["verdict"] == "not compared: no seed in common (a paired test needs the same seeds)"
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--metric", "map@r"])
    assert res.exit_code == 0, res.stderr
    assert "(seed 3) |" in res.stdout and "seed 3.0" not in res.stdout
    assert "lone: one method only, nothing to compare it with" in res.stdout


def test_the_printed_difference_is_the_one_the_paired_test_is_about(tmp_path):
    # a: seeds 0,1,2; b: seeds 1,2,3. Ranked by all their seeds; compared on seeds 1 and 2.
    for s, v in zip((0, 1, 2), (0.60, 0.80, 0.82)):
        _run(tmp_path, "d", "a", s, v, np.full(20, v))
    for s, v in zip((1, 2, 3), (0.70, 0.71, 0.90)):
        _run(tmp_path, "d", "b", s, v, np.full(20, v))
    r = compare(tmp_path, "map@r")
    ba = r["pairs"].iloc[0]  # b ranks first (0.770 against 0.740 over all seeds), but trails on the shared ones
    assert (ba["a"], ba["b"], ba["seeds"]) == ("b", "a", 2)
    assert ba["diff"] == pytest.approx(((0.70 - 0.80) + (0.71 - 0.82)) / 2)
    assert ba["p_seeds"] == pytest.approx(scipy.stats.ttest_rel([0.70, 0.71], [0.80, 0.82]).pvalue)
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--metric", "map@r"])
    assert "b vs a (d) | -0.1050 | 2 |" in res.stdout


def test_one_seed_shows_a_dash_for_the_seed_test_and_a_cd_plot_is_refused_first(tmp_path):
    _run(tmp_path, "d", "a", 0, 0.8, np.linspace(0.5, 1, 40))
    _run(tmp_path, "d", "b", 0, 0.7, np.linspace(0.4, 0.9, 40))
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--metric", "map@r"])
    assert "a vs b (d) | +0.1000 | 1 | — |" in res.stdout and "nan" not in res.stdout
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--cd-plot", str(tmp_path / "cd.png")])
    assert res.exit_code == 2 and res.stdout == "" and "leave out --cd-plot" in res.stderr


def test_no_shared_seed_shows_no_difference_and_a_cd_plot_folder_is_refused(tmp_path):
    _run(tmp_path, "d", "x", 0, 0.8)
    _run(tmp_path, "d", "y", 1, 0.7)
    res = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert "x vs y (d) | — | 0 | — |" in res.stdout
    res = CliRunner().invoke(app, ["compare", str(tmp_path), "--cd-plot", str(tmp_path)])
    assert res.exit_code == 2 and res.stdout == "" and "(that is a folder)" in res.stderr


def test_the_table_marks_a_probe_lambda_on_its_edge_and_rows_from_uncommitted_code(tmp_path):
    from dmlbench.report.table import table_text

    for s in range(2):
        _run(tmp_path, "d", "a", s, 0.8 + s / 100)
        _run(tmp_path, "d", "b", s, 0.7 + s / 100)
    for d in (tmp_path / "d").glob("*/*"):
        edge = d.parent.name == "a" and d.name.startswith("s1")
        (d / "metrics.json").write_text(json.dumps({"map@r": 0.8, "svm_acc": 0.9, "svm_lambda": 1e-8,
                                                    "svm_lambda_edge": int(edge)}))
        cfg = json.loads((d / "config.json").read_text())
        cfg["provenance"] = {"git_commit": "abc123", "git_dirty": d.parent.name == "b", "code_hash": "h"}
        (d / "config.json").write_text(json.dumps(cfg))
    text = table_text(tmp_path / "d", metrics="map@r,svm_acc")
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| d ")}
    assert set(rows) == {"a", "b *"}
    assert "0.9000 ± 0.0000** †" in rows["a"] and "†" not in rows["b *"]
    assert "† svm_acc: the probe's regularisation λ stayed on the edge of its grid" in text
    assert "Rows marked * were made from a tree with uncommitted changes" in text
    assert "†" not in table_text(tmp_path / "d", metrics="map@r")          # no svm_acc column: no mark, no note


def test_compare_takes_several_folders_and_a_class_disjoint_split_is_its_own_dataset(tmp_path):
    # Three suite folders, one per task: MNIST, unseen MNIST digits (split classes) and digits.
    vals = {"a": [0.9, 0.91, 0.92], "b": [0.8, 0.82, 0.81], "c": [0.5, 0.52, 0.49]}
    for folder, ds, split in (("one", "mnist", "standard"), ("two", "mnist", "classes"), ("three", "digits", "standard")):
        for m, v in vals.items():
            for s, x in enumerate(v):
                _run(tmp_path / folder, ds, m, s, x)
        for cfg_path in (tmp_path / folder).glob("*/*/*/config.json"):
            cfg = json.loads(cfg_path.read_text())
            cfg_path.write_text(json.dumps({**cfg, "split": split}))
    folders = [str(tmp_path / f) for f in ("one", "two", "three")]
    r = compare(folders, "map@r")
    assert sorted(r["ranking"]["dataset"].unique()) == ["digits", "mnist", "mnist[classes]"]
    assert r["friedman"]["n_blocks"] == 3 and r["friedman"]["methods"][0] == "a"
    res = CliRunner().invoke(app, ["compare", *folders, "--cd-plot", str(tmp_path / "cd.png")])
    assert res.exit_code == 0, res.stderr
    assert "Friedman over 3 datasets" in res.stdout and (tmp_path / "cd.png").stat().st_size > 0
    bad = CliRunner().invoke(app, ["compare", folders[0], str(tmp_path / "missing")])
    assert bad.exit_code != 0 and "missing does not exist" in bad.stderr


def test_a_page_ranks_block_is_filled_from_the_runs_as_bench_compare_ranks_them(tmp_path):
    from dmlbench.report.fill import fill_text

    vals = {"a": [0.9, 0.91, 0.92], "b": [0.8, 0.82, 0.81], "c": [0.5, 0.52, 0.49]}
    for ds in ("d1", "d2", "d3"):
        for m, v in vals.items():
            for s, x in enumerate(v):
                _run(tmp_path / "res", ds, m, s, x if (ds, m) != ("d3", "c") else 0.95)   # c wins on d3
    for s in range(3):
        _run(tmp_path / "res", "d1", "z", s, 0.99)   # best on d1, but on no other dataset: not in the test
    page = "x\n<!-- dmlbench:ranks res/d1 res/d2 res/d3 metric=map@r -->stale<!-- /dmlbench:ranks -->\ny\n"
    text = fill_text(page, tmp_path)
    r = compare([tmp_path / "res" / d for d in ("d1", "d2", "d3")], "map@r")
    fr = r["friedman"]
    assert "| a | 1 | 1 | 2 | 1.33 |" in text and "| c | 3 | 3 | 1 | 2.33 |" in text
    assert f"p = {fr['p_value']:.3g}" in text and f"{fr['cd']:.2f}." in text and "stale" not in text
    assert "| z |" not in text and "Left out (not run on every dataset): z." in text
    assert fill_text(text, tmp_path) == text                                    # filled: nothing left to change
