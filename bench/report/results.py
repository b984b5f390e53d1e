"""Reading results: the run folders under a results folder, as one pandas frame (no torch, no faiss).

The table (:mod:`dmlbench.report.table`), the plots and ``bench compare`` all read runs through here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import CorruptFileError, read_json
from dmlbench.methods import method_names
from dmlbench.running import layout

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
        # A class-disjoint split is another task on the same files: its own dataset in tables and ranks.
        dataset = cfg["dataset"] + ("[classes]" if cfg.get("split") == "classes" else "")
        row = {"dataset": dataset, "method": cfg["method"], "label": label, "group_id": cfg["group_id"],
               "options": {k: v for k, v in cfg.items() if k not in NOT_OPTIONS},
               "seed": cfg["seed"], "run_dir": str(run), "code": prov.get("code_hash"),
               "commit": (prov.get("git_commit") or "")[:10] + ("+dirty" if prov.get("git_dirty") else ""),
               "device": (prov.get("device") or {}).get("gpu") or (prov.get("device") or {}).get("device"),
               "torch": (prov.get("versions") or {}).get("torch"), "world_size": world_size(cfg)}
        try:
            if layout.is_complete(run):
                row.update(status="done", **layout.check_outputs(run))
            elif (run / layout.FAILED).exists():
                row.update(status="failed", reason=read_json(run / layout.FAILED).get("reason", "?"))
            else:
                row.update(status="unfinished")
        except CorruptFileError as e:
            log.warning("%s", e)
            row.update(status="corrupt", reason=str(e))
        rows.append(row)
    return pd.DataFrame(rows)


def world_size(cfg: dict) -> int:
    """How many processes made a run (config.json's ``distributed``; 1 for runs made before it existed)."""
    return int((cfg.get("distributed") or {}).get("world_size") or 1)


# What a run's config holds besides the options that make its group: ids, provenance, and the
# settings that never change a result (NOT_IN_ID in dmlbench.running.config).
NOT_OPTIONS = ("provenance", "run_id", "group_id", "seed", "variant", "weights_info", "device", "data_dir",
               "threads", "tuned", "method", "log", "nproc_per_run", "distributed")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _distinguish(rows: pd.DataFrame) -> dict[str, str]:
    """{group_id: suffix} for groups that share a label: the options in which they differ
    (``lr_schedule=cosine``), else the group id where more than 3 options differ."""
    first = rows.drop_duplicates("group_id").set_index("group_id")["options"]
    opts = {g: (o if isinstance(o, dict) else {}) for g, o in first.items()}
    keys = sorted({k for o in opts.values() for k in o})
    differ = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True, default=str) for o in opts.values()}) > 1]
    if not differ or len(differ) > 3:
        return {g: f" #{g[:6]}" for g in opts}
    return {g: " [" + ", ".join(f"{k}={_fmt(o.get(k))}" for k in differ) + "]" for g, o in opts.items()}


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs, one per (dataset, config, seed), labelled for tables and plots.

    The same config and seed found twice (e.g. in two suite folders) counts once. Configs that
    share a label (e.g. other epochs) get the options in which they differ appended
    (``siamese [epochs=8]``), or their config id where many differ.
    """
    done = runs[runs["status"] == "done"] if len(runs) else runs
    if not len(done):
        raise DMLBenchError("no complete runs found; run `bench run` first, or point at the right results folder")
    done = done.drop_duplicates(["dataset", "group_id", "seed"])
    labels = done["label"].copy()
    for _, rows in done.groupby(["dataset", "label"]):
        if rows["group_id"].nunique() > 1 and "options" in rows:
            suffix = _distinguish(rows)
            labels.loc[rows.index] = rows["label"] + rows["group_id"].map(suffix)
        elif rows["group_id"].nunique() > 1:
            labels.loc[rows.index] = rows["label"] + " #" + rows["group_id"].str[:6]
    return done.assign(label=labels)


def load_runs(results_dir: Path, recursive: bool = True) -> pd.DataFrame:
    """Complete runs with their config, the table's label per configuration and their suite folder,
    in the table's row order (``recursive=False``: one suite folder's own runs)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DMLBenchError(f"results folder {results_dir} does not exist; run `bench run` first or give its path")
    done = label_runs(collect(results_dir, recursive)).copy()
    done["dataset_dir"] = [str(Path(r).parents[1]) for r in done["run_dir"]]
    done["config"] = [read_json(Path(r) / layout.CONFIG) for r in done["run_dir"]]
    done["_order"] = done["label"].map(label_order(done["label"], done["method"]))
    return done.sort_values(["_order", "seed"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _natural(text: str) -> tuple:
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def label_order(labels, methods) -> dict[str, int]:
    """Rank of each row label: methods in registry order (plugins after), a method's default
    configuration before its variants, variants by their options with numbers compared as numbers,
    and the raw floor last."""
    registry = {m: i for i, m in enumerate(method_names())}

    def key(pair):
        label, method = pair
        return (method == "raw", registry.get(method, len(registry)), method, _natural(label[len(method):]))

    pairs = sorted(dict.fromkeys(zip(labels, methods)), key=key)
    return {label: i for i, (label, _) in enumerate(pairs)}
