"""Data-parallel training throughput on the CPU (issue #29): one run as 2 processes of 1 thread
each (``--nproc-per-run 2``, gloo) against 1 process of 2 threads, on MNIST (the convnet) or
digits (the MLP). A benchmark script, never a timed test.

    python benchmarks/ddp_throughput.py --data-dir ../shared/data [--dataset mnist] [--reps 3] [--settings 1x2,2x1,1x1]

Each measurement is a fresh run in fresh processes (the launcher's rank pool, one per
measurement) of ``--steps`` steps in epochs of ``--epoch-steps``; the first epoch is left out
(warm-up), and the training images per second are the steps' images over the epochs' seconds
(measured inside the training loop: no start-up, no checkpoint writes, no evaluation). The
settings (PROCESSESxTHREADS each; 1x1 is the one-core reference) alternate, ``--reps``
times, so that a machine other people load slows all alike; the load average is recorded before
each measurement. The result goes to
benchmarks/results/ddp_cpu.json with the commit, date, machine and torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = "1x2,2x1,1x1"  # processes x threads each: 1 of 2 threads, 2 of 1 thread, and 1 of 1 (the reference)


def train_only(job):
    """A rank's work: the run, scored on one cheap metric (the evaluation is not what is measured)."""
    from dmlbench.running.runner import run_one

    return run_one(job.config, job.suite_dir, metrics=["triplet_acc"])


def measure(dataset: str, data_dir: str, method: str, nproc: int, threads: int, steps: int, epoch_steps: int,
            batch: int, out: Path) -> dict:
    """One fresh run's training images per second, its epochs after the first."""
    import pandas as pd

    from dmlbench.executors.base import WorkerSetup
    from dmlbench.executors.ranks import RankPool
    from dmlbench.running.config import RunConfig
    from dmlbench.running.rundata import load_data
    from dmlbench.running.runner import RunJob

    base = RunConfig(dataset=dataset, data_dir=data_dir, steps=steps, batch_size=batch,
                     epoch_size=batch * epoch_steps, test_triplets=1000, nproc_per_run=nproc, threads=threads)
    cfg = base.resolved().with_budget(len(load_data(base).train))
    cfg = RunConfig(**{**cfg.to_dict(), "method": method})
    load = os.getloadavg()[0]
    pool = RankPool(nproc, threads, WorkerSetup.here(1), "cpu")
    try:
        result = pool.run(train_only, RunJob(cfg, out))
    finally:
        pool.close()
    if result.status != "done":
        raise SystemExit(f"{method} x{nproc}: {result.reason}")
    hist = pd.read_csv(result.run_dir / "history.csv").iloc[1:]
    images = float((hist["images_per_s"] * hist["seconds"]).sum())
    return {"setting": f"{nproc}x{threads // nproc}", "processes": nproc, "threads_each": threads // nproc, "images_per_s": images / float(hist["seconds"].sum()),
            "epochs_timed": len(hist), "load_avg_1min_before": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--methods", default="triplet-hinge,tvae")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--epoch-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settings", default=SETTINGS, help="PROCESSESxTHREADS each, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp_cpu.json"))
    args = ap.parse_args()
    import torch

    settings = [(int(n), int(n) * int(t)) for n, t in (s.split("x") for s in args.settings.split(","))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for method in args.methods.split(","):
                for nproc, threads in settings:
                    out = Path(tmp) / f"r{rep}-{method}-{nproc}x{threads}"
                    row = {"rep": rep, "method": method,
                           **measure(args.dataset, args.data_dir, method, nproc, threads, args.steps,
                                     args.epoch_steps, args.batch_size, out)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    summary = {}
    for method in args.methods.split(","):
        med = {f"{n}x{t // n}": statistics.median(r["images_per_s"] for r in rows
                                                  if r["method"] == method and r["setting"] == f"{n}x{t // n}")
               for n, t in settings}
        summary[method] = {f"{k}_images_per_s": round(v, 1) for k, v in med.items()}
        if {"1x2", "2x1"} <= med.keys():
            summary[method]["speedup_2x1_over_1x2"] = round(med["2x1"] / med["1x2"], 3)
        if {"1x1", "2x1"} <= med.keys():
            summary[method]["speedup_2x1_over_1x1"] = round(med["2x1"] / med["1x1"], 3)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    doc = {"what": "training images/s of one run: PxT = P processes of T threads each (2x1: --nproc-per-run 2, gloo; "
                   "1x2: one process of 2 threads; 1x1: the one-core reference); median over reps, the first epoch "
                   "left out",
           "commit": commit + ("+changes" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M"),
           "machine": {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
           "config": {"dataset": args.dataset, "steps": args.steps, "epoch_steps": args.epoch_steps,
                      "batch_size": args.batch_size, "reps": args.reps},
           "summary": summary, "runs": rows,
           "note": "the machine is shared: load_avg_1min_before says how busy it was before each measurement"}
    text = json.dumps(doc, indent=1)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
