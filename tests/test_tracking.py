"""--log tensorboard and --log mlflow: what each writes, in the run's own folder or store, with a
worker pool, across a resumed run (its curves continue, no step twice), and what happens when the
library is missing or the server cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmlbench.cli import app

ARGS = ["--methods", "siamese", "--steps", "12", "--epoch-size", "256", "--batch-size", "64",
        "--test-triplets", "100", "--threads", "1"]  # 3 epochs of 4 steps


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def one_run(out: Path, method: str = "siamese") -> Path:
    (run,) = (out / "digits" / method).glob("s0-*")
    return run


def test_tensorboard_logs_steps_lr_metrics_and_the_projector(tmp_path):
    pytest.importorskip("tensorboard")
    r = bench("run", *ARGS, "--out", tmp_path, "--log", "tensorboard")
    assert r.exit_code == 0, r.stderr
    run = one_run(tmp_path)
    s = scalars(run)
    assert [step for step, _ in s["train/contrastive"]] == list(range(1, 13))
    assert [step for step, _ in s["train/lr"]] == list(range(1, 13)) and s["train/lr"][0][1] == pytest.approx(1e-3)
    metrics = json.loads((run / "metrics.json").read_text())
    assert s["test/map@r"] == [(12, pytest.approx(metrics["map@r"]))]
    history = [json.loads(json.dumps(v)) for v in s["train/loss"]]
    assert len(history) == 12
    projector = list((run / "tb").rglob("projector_config.pbtxt"))
    assert projector and list((run / "tb").rglob("sprite.png")) and list((run / "tb").rglob("metadata.tsv"))
    raw = one_run(tmp_path, "raw")  # an untrained row logs its metrics too
    assert scalars(raw)["test/map@r"][0][0] == 0


def test_a_resumed_run_continues_its_curves_without_a_step_twice(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from dmlbench.training.trainer import Trainer

    real_save = Trainer._save

    def crash_after_epoch_2(self, epoch, opt, sched):
        real_save(self, epoch, opt, sched)
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save", crash_after_epoch_2)
        assert bench("run", *ARGS, "--out", tmp_path, "--log", "tensorboard,mlflow").exit_code != 0
    r = bench("run", *ARGS, "--out", tmp_path, "--log", "tensorboard,mlflow")
    assert r.exit_code == 0, r.stderr
    run = one_run(tmp_path)
    steps = [step for step, _ in scalars(run)["train/contrastive"]]
    assert steps == list(range(1, 13))  # 8 before the crash, 4 after, none twice
    from mlflow.tracking import MlflowClient

    doc = json.loads((run / "mlflow.json").read_text())
    history = MlflowClient(doc["uri"]).get_metric_history(doc["run_id"], "train/contrastive")
    assert sorted(m.step for m in history) == list(range(1, 13))


def test_mlflow_nests_each_run_under_its_suite_with_params_metrics_and_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    r = bench("run", *ARGS, "--seeds", "0,1", "--workers", "2", "--out", tmp_path, "--log", "mlflow")
    assert r.exit_code == 0, r.stderr
    parent = json.loads((tmp_path / "digits" / "mlflow.json").read_text())
    client = MlflowClient(parent["uri"])
    assert parent["uri"] == (tmp_path / "mlruns").as_uri()  # a local file store beside the results
    for seed in (0, 1):
        (run,) = (tmp_path / "digits" / "siamese").glob(f"s{seed}-*")
        doc = json.loads((run / "mlflow.json").read_text())
        info = client.get_run(doc["run_id"])  # logged from a pool worker
        assert info.data.tags["mlflow.parentRunId"] == parent["run_id"]
        assert info.data.params["lr"] == "0.001" and info.data.params["method"] == "siamese"
        metrics = json.loads((run / "metrics.json").read_text())
        assert info.data.metrics["test/map_at_r"] == pytest.approx(metrics["map@r"])
        assert len(client.get_metric_history(doc["run_id"], "train/lr")) == 12
        artifacts = {a.path for a in client.list_artifacts(doc["run_id"])}
        assert {"metrics.json", "config.json", "history.csv"} <= artifacts


def test_an_unreachable_tracking_server_costs_one_warning_not_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    r = bench("run", *ARGS, "--out", tmp_path, "--log", "mlflow")
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "--log mlflow" in ln]
    assert len(lines) == 1 and "the runs go on without it" in lines[0], r.stderr
    assert (one_run(tmp_path) / "metrics.json").is_file() and "Traceback" not in r.stderr


def test_a_missing_tracker_is_one_line_with_its_install_hint(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    r = bench("run", *ARGS, "--out", tmp_path, "--log", "tensorboard")
    assert r.exit_code == 2 and "pip install 'dmlbench[tensorboard]'" in r.stderr
    assert not (tmp_path / "digits").exists()  # refused before any run
    r = bench("run", *ARGS, "--out", tmp_path, "--log", "wandb")
    assert r.exit_code == 2 and "unknown logger 'wandb'" in r.stderr
