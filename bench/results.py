"""Reading results: the run folders under a results folder, as one pandas frame (no torch, no faiss).

The table (:mod:`dmlbench.table`), the plots and ``bench compare`` all read runs through here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmlbench import layout
from dmlbench.errors import DMLBenchError
from dmlbench.io import CorruptFileError, read_json

log = logging.getLogger("dmlbench")


def collect(results_dir: Path, recursive: bool = True) -> pd.DataFrame:
    """One row per run folder (complete, failed, unfinished or unreadable) under results_dir.

    ``recursive=False`` reads only one suite's own runs. A corrupt file is reported by name (a
    warning, and the run's status ``corrupt``), never silently skipped.
    """
    rows = []
    for run in layout.run_dirs(results_dir, recursive):
        try:
            cfg = read_json(run / layout.CONFIG)
        except CorruptFileError as e:
            log.warning("%s", e)
            rows.append({"run_dir": str(run), "status": "corrupt", "reason": str(e), "dataset": "?",
                         "method": run.parent.name, "label": run.parent.name, "group_id": run.name, "seed": -1})
            continue
        if not {"method", "group_id", "seed", "dataset"} <= cfg.keys():
            continue  # some other tool's config.json, not a dmlbench run
        label = cfg["method"] + (f"[{cfg['variant']}]" if cfg.get("variant") else "")
        prov = cfg.get("provenance") or {}
        row = {"dataset": cfg["dataset"], "method": cfg["method"], "label": label, "group_id": cfg["group_id"],
               "seed": cfg["seed"], "run_dir": str(run), "code": prov.get("code_hash"),
               "commit": (prov.get("git_commit") or "")[:10] + ("+dirty" if prov.get("git_dirty") else ""),
               "device": (prov.get("device") or {}).get("gpu") or (prov.get("device") or {}).get("device"),
               "torch": (prov.get("versions") or {}).get("torch")}
        try:
            if layout.is_complete(run):
                from dmlbench.runner import check_outputs  # torch-free: reads files only

                row.update(status="done", **check_outputs(run))
            elif (run / layout.FAILED).exists():
                row.update(status="failed", reason=read_json(run / layout.FAILED).get("reason", "?"))
            else:
                row.update(status="unfinished")
        except CorruptFileError as e:
            log.warning("%s", e)
            row.update(status="corrupt", reason=str(e))
        rows.append(row)
    return pd.DataFrame(rows)


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs, one per (dataset, config, seed), labelled for tables and plots.

    The same config and seed found twice (e.g. in two suite folders) counts once. A label that
    covers several configs (e.g. other epochs) gets the config id appended.
    """
    done = runs[runs["status"] == "done"] if len(runs) else runs
    if not len(done):
        raise DMLBenchError("no complete runs found; run `bench run` first, or point at the right results folder")
    done = done.drop_duplicates(["dataset", "group_id", "seed"])
    n_groups = done.groupby(["dataset", "label"])["group_id"].transform("nunique")
    return done.assign(label=np.where(n_groups > 1, done["label"] + " #" + done["group_id"].str[:6], done["label"]))


def load_runs(results_dir: Path) -> pd.DataFrame:
    """Complete runs with their config, the table's label per configuration and their suite folder,
    in the table's row order."""
    from dmlbench.table import label_order

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DMLBenchError(f"results folder {results_dir} does not exist; run `bench run` first or give its path")
    done = label_runs(collect(results_dir)).copy()
    done["dataset_dir"] = [str(Path(r).parents[1]) for r in done["run_dir"]]
    done["config"] = [read_json(Path(r) / layout.CONFIG) for r in done["run_dir"]]
    done["_order"] = done["label"].map(label_order(done["label"], done["method"]))
    return done.sort_values(["_order", "seed"], kind="stable").drop(columns="_order").reset_index(drop=True)
