"""``--log mlflow``: one MLflow run per dmlbench run, nested under one parent run per suite: the run
config as params, the loss terms and learning rate per step and the test metrics as metrics,
metrics.json, config.json and history.csv as artifacts.

The tracking store is ``$MLFLOW_TRACKING_URI`` (any server), else a local file store
``mlruns/`` beside the suite folder (MLflow's file store, kept on for this). A server that cannot
be reached costs one warning, not the run: requests are tried once, with a short timeout.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import read_json, write_json
from dmlbench.tracking.base import register_logger

RUN_FILE = "mlflow.json"  # in a run folder (its MLflow run) and in a suite folder (the parent run)
PARAM_MAX = 500  # characters of a param value kept (MLflow refuses long ones)


def tracking_uri(suite_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a file store ``mlruns/`` in the suite's results folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(suite_dir).resolve().parent / "mlruns").as_uri()


def client(uri: str):
    """An MlflowClient that tries a request once, for 5 s (MLflow retries for minutes by default)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it for who asks
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(c, name: str) -> str:
    found = c.get_experiment_by_name(name)
    return found.experiment_id if found is not None else c.create_experiment(name)


def _stored(path: Path, uri: str) -> str | None:
    """The MLflow run id stored in ``path`` for this tracking store, or None."""
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except DMLBenchError:
        return None
    return doc.get("run_id") if doc.get("uri") == uri else None


def parent_run(suite_dir: Path, dataset: str) -> dict:
    """The suite's parent run (made once, kept in the suite folder): the context every run of the
    suite is nested under."""
    uri = tracking_uri(suite_dir)
    c = client(uri)
    path = Path(suite_dir) / RUN_FILE
    run_id = _stored(path, uri)
    if run_id is None:
        run = c.create_run(_experiment(c, f"dmlbench/{dataset}"), run_name=Path(suite_dir).name,
                           tags={"dmlbench.suite": str(suite_dir)})
        run_id = run.info.run_id
        write_json(path, {"uri": uri, "run_id": run_id})
    return {"mlflow_uri": uri, "mlflow_parent": run_id}


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in config.items():
        if k in ("provenance", "data", "weights_info"):
            continue
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return {k: v[:PARAM_MAX] for k, v in out.items()}


@register_logger("mlflow")
class MLflowLogger:
    """One MLflow run per dmlbench run, under the suite's parent run (pip install 'dmlbench[mlflow]')."""

    suite_context = staticmethod(parent_run)

    @staticmethod
    def check() -> None:
        """Refuse, with the install hint, where MLflow does not import."""
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise DMLBenchError("--log mlflow needs MLflow: pip install 'dmlbench[mlflow]'") from None

    def __init__(self, run_dir: Path, config: dict, context: dict, resume_step: int = 0):
        from mlflow.entities import Param

        self.run_dir = Path(run_dir)
        uri = context.get("mlflow_uri") or tracking_uri(self.run_dir.parent.parent)
        self.client = client(uri)
        path = self.run_dir / RUN_FILE
        self.run_id = _stored(path, uri)  # a resumed run continues its MLflow run
        if self.run_id is None:
            tags = {"mlflow.parentRunId": context["mlflow_parent"]} if context.get("mlflow_parent") else {}
            exp = _experiment(self.client, f"dmlbench/{config.get('dataset', 'data')}")
            self.run_id = self.client.create_run(exp, run_name=f"{config.get('method')} s{config.get('seed')}",
                                                 tags=tags).info.run_id
            write_json(path, {"uri": uri, "run_id": self.run_id})
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in _flat(config).items()])

    def _metrics(self, items: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow's names take no "@": recall@1 is logged as recall_at_1, map@r as map_at_r.
        batch = [Metric(k.replace("@", "_at_"), float(v), now, int(s)) for k, v, s in items]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1,000 metrics a batch
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def log_steps(self, first_step: int, names: Sequence[str], values: np.ndarray, lrs: Sequence[float]) -> None:
        """Each step's loss terms, their total and the learning rate."""
        items = []
        for i, row in enumerate(values):
            step = first_step + i + 1
            items += [(f"train/{n}", v, step) for n, v in zip([*names, "loss"], row)] + [("train/lr", lrs[i], step)]
        self._metrics(items)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """The test metrics at the run's last step."""
        self._metrics([(f"test/{k}", v, step) for k, v in metrics.items()])

    def log_embeddings(self, embeddings: np.ndarray, labels: np.ndarray, images) -> None:
        """MLflow has no projector: the embeddings stay in the run's embeddings.npz."""

    def log_files(self, paths: Sequence[Path]) -> None:
        """The run's files, as artifacts."""
        for p in paths:
            if Path(p).is_file():
                self.client.log_artifact(self.run_id, str(p))

    def close(self) -> None:
        """Mark the MLflow run finished."""
        self.client.set_terminated(self.run_id)
