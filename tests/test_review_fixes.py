"""Regression tests for problems a code review found: each one gave wrong numbers silently, or a
traceback, before it was fixed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.data import load_dataset
from dmlbench.errors import DMLBenchError
from dmlbench.methods.base import Batch
from dmlbench.methods.pml import pml_loss_names, pml_method
from dmlbench.sampling import ClassIndex, balanced_indices
from dmlbench.table import aggregate, collect, format_table


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", pml_loss_names())
def test_every_listed_pml_loss_builds_and_trains(name):
    cls = pml_method("pml:" + name)
    method = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=16, encoder="mlp", num_classes=10)
    y = torch.arange(40) % 10
    loss = method.loss_terms(Batch(torch.rand(40, 1, 8, 8), y, method.batch_spec(), 40))["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in method.encoder.parameters())


def test_pml_losses_with_inherited_or_clashing_options():
    # CosFaceLoss takes num_classes/embedding_size through *args; CircleLoss has its own `m`.
    assert "margin" in pml_method("pml:CosFaceLoss").Params.__dataclass_fields__
    circle = pml_method("pml:CircleLoss").Params()
    assert circle.m == 0.4 and circle.m_per_class == 4
    assert "GenericPairLoss" not in pml_loss_names() and "VICRegLoss" not in pml_loss_names()


def test_balanced_batches_have_distinct_classes_and_members():
    y = torch.arange(600) % 10
    gen = torch.Generator().manual_seed(0)
    idx = balanced_indices(ClassIndex(y), steps=50, per_step=120, group=40, m=4, gen=gen)
    assert idx.shape == (50, 120)
    cells = idx.view(-1, 10, 4)  # (groups, classes, m)
    labels = y[cells]
    assert bool((labels == labels[..., :1]).all())  # m images of one class, consecutive
    assert all(len(set(g[:, 0].tolist())) == 10 for g in labels)  # distinct classes per group
    assert all(len(set(c.tolist())) == 4 for c in cells.reshape(-1, 4))  # no image twice in a class
    # Every class and most images get drawn over an epoch: no starvation.
    assert len(set(idx.flatten().tolist())) > 0.9 * 600


def test_fashion_mnist_does_not_read_mnist_from_a_bare_folder(data_dir):
    with pytest.raises(DMLBenchError, match="fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=data_dir / "mnist")


def test_table_counts_a_config_once_across_suites_and_bolds_per_dataset(tmp_path):
    out = tmp_path / "r"
    for suite in ("a", ""):
        args = ["run", "--methods", "triplet-hinge", "--epochs", "1", "--test-triplets", "50", "--out", out]
        r = bench(*args, *(["--suite", suite] if suite else []))
        assert r.exit_code == 0, r.stderr
    runs = collect(out / "digits")
    assert len(runs[runs["method"] == "triplet-hinge"]) == 2  # the same run in two folders
    agg = aggregate(runs)
    assert int(agg.loc[agg["method"] == "triplet-hinge", "n"].iloc[0]) == 1
    # Two datasets: each one's best value is bold.
    fake = agg.copy()
    fake["dataset"] = "other"
    fake["recall@1"] = fake["recall@1"] / 2
    both = format_table(pd_concat(agg, fake), "markdown", ["recall@1"])
    bold = [line for line in both.splitlines() if "**" in line]
    assert {line.split("|")[1].strip() for line in bold} == {"digits", "other"}


def pd_concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)


def test_raw_has_one_run_whatever_the_training_settings(tmp_path):
    out = tmp_path / "r"
    for epochs in ("1", "2"):
        assert bench("run", "--methods", "raw", "--epochs", epochs, "--lr", "0.01", "--test-triplets", "50",
                     "--out", out).exit_code == 0
    assert len(list((out / "digits" / "raw").iterdir())) == 1


def test_a_crashing_method_is_recorded_and_the_suite_goes_on(tmp_path):
    # A loss that cannot be built with these options fails inside its run, not the whole suite.
    out = tmp_path / "r"
    r = bench("run", "--methods", "pml:ArcFaceLoss,triplet-hinge", "--set", "pml:ArcFaceLoss.scale=-1e40",
              "--epochs", "1", "--test-triplets", "50", "--out", out)
    assert r.exit_code == 1, r.stderr
    failed = list((out / "digits" / "pml-ArcFaceLoss").glob("*/failed.json"))
    assert len(failed) == 1 and json.loads(failed[0].read_text())["reason"]
    for method in ("triplet-hinge", "raw"):
        assert list((out / "digits" / method).glob("*/metrics.json")), method
    assert "Failed runs" in (out / "digits" / "table.md").read_text()


def test_generative_methods_refuse_standardised_pixels(tmp_path):
    r = bench("run", "--methods", "vae", "--normalize", "standard", "--epochs", "1", "--out", tmp_path)
    assert r.exit_code == 2 and "[0, 1]" in r.stderr and "Traceback" not in r.output


def test_history_logs_the_rate_each_epoch_trained_at(tmp_path):
    r = bench("run", "--methods", "triplet-hinge", "--epochs", "2", "--lr-schedule", "cosine", "--lr", "0.001",
              "--test-triplets", "50", "--out", tmp_path)
    assert r.exit_code == 0, r.stderr
    hist = next((tmp_path / "digits" / "triplet-hinge").glob("*/history.csv")).read_text().splitlines()
    lrs = [float(line.split(",")[header_index(hist[0], "lr")]) for line in hist[1:]]
    assert lrs == pytest.approx([0.001, 0.0005])  # cosine over 2 epochs: 1e-3, then 5e-4


def header_index(header: str, name: str) -> int:
    return header.split(",").index(name)


@pytest.mark.parametrize("args,needle", [
    (["--threads", "-1"], "--threads"),
    (["--seeds", "-1"], "--seeds"),
    (["--momentum", "-1"], "--momentum"),
    (["--set", "triplet-hinge.mining=hard", "--set", "triplet-hinge.m=0"], "at least 1"),
])
def test_bad_values_are_one_line_errors(tmp_path, args, needle):
    r = bench("run", "--methods", "triplet-hinge", *args, "--epochs", "1", "--out", tmp_path)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.output


def test_bad_toml_types_are_one_line_errors(tmp_path):
    f = tmp_path / "s.toml"
    for text in ('set = "tvae.margin=2"\n', "out = 5\n"):
        f.write_text(text)
        r = bench("run", "--config", f, "--out", tmp_path)
        assert r.exit_code == 2 and "config file" in r.stderr, r.stderr


def test_table_ignores_foreign_config_files(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"something": "else"}))
    assert len(collect(tmp_path)) == 0


def test_knn_k_larger_than_train_set():
    from dmlbench.evaluate import knn_accuracy

    train = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)
    acc = knn_accuracy(train, np.array([0, 0, 1]), np.array([[0.5]], dtype=np.float32), np.array([0]), k=50)
    assert acc == 1.0
