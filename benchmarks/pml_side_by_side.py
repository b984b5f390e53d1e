"""dmlbench side by side with pytorch-metric-learning's own training loop (issue #33): a benchmark
script, never a timed test.

    python benchmarks/pml_side_by_side.py --data-dir ../shared/data [--seeds 0,1,2] [--threads 2]

On real MNIST, seed by seed and alternating which goes first, in one invocation:

(a) ``pml``: the loop of PML's TripletMarginLoss MNIST example notebook
    (examples/notebooks/TripletMarginLossMNIST.ipynb, read at commit 216a792 of
    KevinMusgrave/pytorch-metric-learning): its ``Net`` (conv 1->32 3x3, conv 32->64 3x3, max-pool 2,
    dropout 0.25, fc 9216->128), ``TripletMarginMiner(margin=0.2, type_of_triplets="semihard")`` and
    ``TripletMarginLoss(margin=0.2)`` sharing one ``CosineSimilarity`` (the example's
    ``ThresholdReducer(low=0)`` is the loss's default ``AvgNonZeroReducer``, written out here as the
    example does), Adam at lr 0.01, batch 256, one epoch of a shuffled ``DataLoader`` over the
    MNIST tensors normalised with mean 0.1307 and std 0.3081 (the example reads them through
    torchvision, one PIL image at a time; the tensors are what both arms can share), then its
    ``test``: every embedding by ``testers.BaseTester`` and ``AccuracyCalculator``'s
    precision_at_1 of the test images against the training images.
(b) ``dmlbench``: ``bench run`` with this same ``Net`` registered as a plugin encoder
    (``--plugin`` this file, ``--encoder pml-mnist-net``) and ``pml:TripletMarginLoss`` given the
    same miner, distance, margin, optimiser, learning rate, batch size and number of steps, on
    plain random batches (``batches=plain``, as the shuffled DataLoader) and ``--normalize standard``
    (the training set's mean and std, 0.1307 and 0.3081 to four digits).

Both run in a fresh process with the same thread count. Each arm's training time is its one
epoch's loop (the DataLoader's iteration included for (a); the trainer's epoch for (b), from its
history); the commands' wall times are reported beside it, and dmlbench's evaluation (every
metric of the suite) separately. On a shared machine other jobs come and go within minutes, so
the same ``Net`` also notes when each training forward pass starts, in both arms alike: the
median step (one start to the next) is a second figure, which a passing load moves far less.
A third runs both loops in one process, in alternating blocks of 10 steps (the trainer's epochs
of 10 steps, the example's loop in the trainer's per-epoch callback), so that both meet the same
load within seconds of each other. P@1 is computed the example's way for both, from the
embeddings each arm produced. ``raw``, the pixel floor every ``bench run`` adds, is run for every
seed before the timed commands, so the timed ``bench run`` evaluates the PML method alone.
The result goes to benchmarks/results/pml_side_by_side.json.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dmlbench.blocks import register_encoder

ROOT = Path(__file__).resolve().parents[1]
ENCODER = "pml-mnist-net"
METHOD = "pml:TripletMarginLoss"
MEAN, STD = 0.1307, 0.3081  # the example's normalisation
# The example's loss, miner and distance as options of dmlbench's pml:TripletMarginLoss, on random batches.
SETS = {"margin": "0.2", "distance": "CosineSimilarity", "batches": "plain",
        "miner": "TripletMarginMiner(margin=0.2, type_of_triplets=semihard)"}
# Where an arm's process writes (start time, batch size) of every training forward pass, at exit.
STEP_LOG = os.environ.get("PML_SIDE_BY_SIDE_STEPS")
STEP_STARTS: list[tuple[float, int]] = []
if STEP_LOG:
    atexit.register(lambda: Path(STEP_LOG).write_text(json.dumps(STEP_STARTS)))


@register_encoder(ENCODER, accepts=lambda s: None if min(s[1:]) >= 6 else "needs images of at least 6x6")
class Net(nn.Module):
    """PML's MNIST example net: conv3x3-32, conv3x3-64, max-pool 2, dropout 0.25, fc to the embedding."""

    def __init__(self, shape=(1, 28, 28), out_dim=128):
        super().__init__()
        c, h, w = shape
        self.conv1 = nn.Conv2d(c, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        # (the example also defines dropout2 = Dropout2d(0.5), which its forward never uses)
        self.fc1 = nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), out_dim)  # 9216 on MNIST

    def forward(self, x):
        """The example's forward, line for line (noting when a training step starts, in both arms)."""
        if STEP_LOG and self.training:
            STEP_STARTS.append((time.perf_counter(), len(x)))
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        return x


def read_idx(path: Path):
    """A gzipped IDX file of MNIST as a numpy array (no torchvision here)."""
    import numpy as np

    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


# ----------------------------------------------------------------------------- (a) PML's own loop


def mnist_tensors(data_dir: Path, prefix: str):
    """MNIST ``train`` or ``t10k`` as the example's dataset gives it: float images in [0, 1] normalised
    with its mean and std, (N, 1, 28, 28), and int64 labels, in a TensorDataset."""
    x = torch.from_numpy(read_idx(data_dir / "mnist" / f"{prefix}-images-idx3-ubyte.gz").copy()).float().div_(255)
    y = torch.from_numpy(read_idx(data_dir / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").astype("int64"))
    return torch.utils.data.TensorDataset(x.sub_(MEAN).div_(STD).unsqueeze(1), y)


def pml_arm(data_dir: Path, seed: int, threads: int, batch_size: int, lr: float, max_steps: int | None) -> dict:
    """The example notebook's loop and test, timed; returns the times, P@1 and the step count
    (``max_steps``: stop the epoch early, for a quick try of this script)."""
    t_start = time.perf_counter()
    from pytorch_metric_learning import distances, losses, miners, reducers, testers
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dataset1, dataset2 = mnist_tensors(data_dir, "train"), mnist_tensors(data_dir, "t10k")
    train_loader = torch.utils.data.DataLoader(dataset1, batch_size=batch_size, shuffle=True)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    distance = distances.CosineSimilarity()
    reducer = reducers.ThresholdReducer(low=0)
    loss_func = losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=reducer)
    mining_func = miners.TripletMarginMiner(margin=0.2, distance=distance, type_of_triplets="semihard")
    accuracy_calculator = AccuracyCalculator(include=("precision_at_1",), k=1)
    t_ready = time.perf_counter()

    # train(), as in the example (its progress line every 20 iterations included)
    model.train()
    steps = 0
    for batch_idx, (data, labels) in enumerate(train_loader):
        optimizer.zero_grad()
        embeddings = model(data)
        indices_tuple = mining_func(embeddings, labels)
        loss = loss_func(embeddings, labels, indices_tuple)
        loss.backward()
        optimizer.step()
        steps += 1
        if batch_idx % 20 == 0:
            print(f"Epoch 1 Iteration {batch_idx}: Loss = {loss}, Number of mined triplets = "
                  f"{mining_func.num_triplets}", file=sys.stderr)
        if steps == max_steps:
            break
    t_trained = time.perf_counter()

    # test(), as in the example
    tester = testers.BaseTester()
    train_embeddings, train_labels = tester.get_all_embeddings(dataset1, model)
    test_embeddings, test_labels = tester.get_all_embeddings(dataset2, model)
    accuracies = accuracy_calculator.get_accuracy(test_embeddings, test_labels.squeeze(1), train_embeddings,
                                                  train_labels.squeeze(1), False)
    t_tested = time.perf_counter()
    return {"train_s": t_trained - t_ready, "test_s": t_tested - t_trained, "setup_s": t_ready - t_start,
            "steps": steps, "p_at_1": float(accuracies["precision_at_1"]), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- (b) dmlbench


def bench_args(data_dir: Path, out: Path, seed: int, threads: int, batch_size: int, steps: int, lr: float,
               methods: str = METHOD) -> list[str]:
    """The ``bench run`` command line of arm (b)."""
    sets = SETS if METHOD in methods else {}
    return [str(Path(sys.executable).with_name("bench")), "run", "--plugin", str(Path(__file__).resolve()),
            "--encoder", ENCODER, "--methods", methods, "--dataset", "mnist", "--data-dir", str(data_dir),
            "--normalize", "standard", "--embedding-dim", "128", "--optimizer", "adam", "--lr", str(lr),
            "--batch-size", str(batch_size), "--steps", str(steps), "--epoch-size", str(steps * batch_size),
            "--augment", "none", "--seeds", str(seed), "--threads", str(threads), "--out", str(out),
            *[a for k, v in sets.items() for a in ("--set", f"{METHOD}.{k}={v}")]]


def p_at_1(emb_file: Path) -> float:
    """The example's P@1 (AccuracyCalculator, test images against training images) of stored embeddings."""
    import numpy as np
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    e = np.load(emb_file)
    acc = AccuracyCalculator(include=("precision_at_1",), k=1).get_accuracy(
        torch.from_numpy(e["test_emb"]), torch.from_numpy(e["test_y"]), torch.from_numpy(e["train_emb"]),
        torch.from_numpy(e["train_y"]), False)
    return float(acc["precision_at_1"])


def median_step(log: Path, batch_size: int) -> float:
    """The median time from one training step's forward pass to the next (the checks' example
    batches of 2 left out, and the first 5 steps, which pay for first-call set-ups)."""
    import statistics

    starts = [t for t, n in json.loads(log.read_text()) if n in (batch_size, 96)]  # 96: the DataLoader's last batch
    return statistics.median(b - a for a, b in zip(starts[5:], starts[6:]))


def dmlbench_arm(cmd: list[str], out: Path, env: dict) -> dict:
    """Run ``bench run`` and read what it measured of itself."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"bench run failed ({r.returncode}): {r.stderr[-2000:]}")
    (run,) = (out / "mnist" / "pml-TripletMarginLoss").glob("s*-*")
    metrics = json.loads((run / "metrics.json").read_text())
    history = [ln.split(",") for ln in (run / "history.csv").read_text().splitlines()]
    seconds = [float(row[history[0].index("seconds")]) for row in history[1:]]
    assert len(seconds) == 1, "one epoch expected"
    return {"wall_s": wall, "train_s": seconds[0], "eval_s": metrics["eval_seconds"], "steps": int(metrics["steps"]),
            "p_at_1": p_at_1(run / "embeddings.npz"), "dmlbench_precision@1": metrics["precision@1"],
            "dmlbench_map@r": metrics["map@r"], "stdout_tail": r.stdout.strip().splitlines()[-3:]}


# ----------------------------------------------------------------------------- both loops, interleaved


def interleaved(data_dir: Path, seed: int, threads: int, batch_size: int, steps: int, lr: float,
                block: int = 10) -> dict:
    """Both training loops in this process, alternating every ``block`` steps, each on its own model
    and optimiser for the whole epoch: dmlbench's Trainer runs epochs of ``block`` steps and, in its
    per-epoch callback, the example's loop takes its next ``block`` batches. Returns each arm's
    seconds (the sum of its blocks) and the ratio, with and without the first block (first calls)."""
    import dataclasses
    import statistics

    from pytorch_metric_learning import distances, losses, miners, reducers

    from dmlbench.core.params import apply_overrides
    from dmlbench.core.runtime import set_threads
    from dmlbench.data import load_dataset
    from dmlbench.methods import get_method
    from dmlbench.running.config import RunConfig
    from dmlbench.running.runner import build_method
    from dmlbench.training.trainer import Trainer

    set_threads(threads)
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    distance = distances.CosineSimilarity()
    loss_func = losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=reducers.ThresholdReducer(low=0))
    mining_func = miners.TripletMarginMiner(margin=0.2, distance=distance, type_of_triplets="semihard")
    batches = iter(torch.utils.data.DataLoader(mnist_tensors(data_dir, "train"), batch_size=batch_size, shuffle=True))
    pml_seconds: list[float] = []

    def pml_block(trainer, row) -> None:
        model.train()
        t0 = time.perf_counter()
        for _ in range(min(block, steps - block * len(pml_seconds))):
            data, labels = next(batches)
            optimizer.zero_grad()
            embeddings = model(data)
            loss = loss_func(embeddings, labels, mining_func(embeddings, labels))
            loss.backward()
            optimizer.step()
        pml_seconds.append(time.perf_counter() - t0)

    params = apply_overrides(get_method(METHOD).Params(), SETS, METHOD)
    cfg = RunConfig(dataset="mnist", data_dir=str(data_dir), method=METHOD, seed=seed, encoder=ENCODER, embedding_dim=128,
                    normalize="standard", optimizer="adam", lr=lr, batch_size=batch_size, steps=steps,
                    epoch_size=block * batch_size, augment="none", method_params=dataclasses.asdict(params)).resolved()
    data = load_dataset("mnist", data_dir=str(data_dir), normalize="standard")
    trainer = Trainer(build_method(cfg, data), data, cfg.train_config(), callbacks=(pml_block,))
    trainer.fit()
    dml_seconds = [row["seconds"] for row in trainer.history]
    assert len(dml_seconds) == len(pml_seconds)

    def arms(first: int) -> dict:
        pml, dml = sum(pml_seconds[first:]), sum(dml_seconds[first:])
        return {"pml_s": round(pml, 3), "dmlbench_s": round(dml, 3), "ratio": round(dml / pml, 4),
                "median_block_ratio": round(statistics.median(d / p for d, p in zip(dml_seconds[first:],
                                                                                    pml_seconds[first:])), 4)}

    return {"seed": seed, "block_steps": block, "blocks": len(dml_seconds), "all_blocks": arms(0),
            "without_first_block": arms(1), "pml_block_s": [round(x, 3) for x in pml_seconds],
            "dmlbench_block_s": [round(x, 3) for x in dml_seconds]}


# ----------------------------------------------------------------------------- the input path alone


def input_path(data_dir: Path, threads: int, batch_size: int, steps: int, reps: int = 5) -> dict:
    """One epoch of batches without the model, the median of ``reps`` alternated: the example's
    shuffled DataLoader over the float tensors (256 items fetched and stacked a batch) against
    dmlbench's trainer input (an epoch's indices drawn at once, the uint8 batch gathered, turned
    into float and normalised). A short, repeatable measure of what each harness adds per step."""
    import statistics

    from dmlbench.blocks.batches import PLAIN
    from dmlbench.core.runtime import epoch_generator
    from dmlbench.data import load_dataset
    from dmlbench.training.inputs import DeviceImages, InputPipeline

    torch.set_num_threads(threads)
    loader = torch.utils.data.DataLoader(mnist_tensors(data_dir, "train"), batch_size=batch_size, shuffle=True)
    data = load_dataset("mnist", data_dir=str(data_dir), normalize="standard")
    images, pipeline = DeviceImages(data.train, torch.device("cpu")), InputPipeline(data, "none", (28, 28))
    layout = PLAIN.layout(batch_size, data.num_train_classes)

    def pml_epoch() -> int:
        return sum(len(y) for _, y in loader)

    def dmlbench_epoch() -> int:
        idx_all = PLAIN.epoch_indices(None, len(data.train), layout, steps, epoch_generator(0, 0, 0))
        gen, n = epoch_generator(0, 0, 1), 0
        for step in range(steps):
            idx = idx_all[step]
            n += len(PLAIN.batch(pipeline.train(images.take(idx), gen), images.y[idx], layout).y)
        return n

    times: dict[str, list[float]] = {"pml_dataloader": [], "dmlbench_trainer_input": []}
    for _ in range(reps):
        for name, epoch in (("pml_dataloader", pml_epoch), ("dmlbench_trainer_input", dmlbench_epoch)):
            t0 = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]}
            for name, v in times.items()}


# ----------------------------------------------------------------------------- the driver


def machine(threads: int) -> dict:
    """Where and with what it ran."""
    from importlib import metadata

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": time.strftime("%Y-%m-%d %H:%M"), "host": socket.gethostname(), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_metric_learning": metadata.version("pytorch-metric-learning"), "threads": threads,
            "load_average_at_start": os.getloadavg()}


def summary(rows: list[dict]) -> dict:
    """Means with 95% t-intervals over seeds, the training-time ratio, and whether P@1 agrees."""
    from dmlbench.report.stats import t_interval

    def ci(values):
        mean, _, half = t_interval(values)
        return {"mean": round(mean, 4), "ci95": round(half, 4), "values": [round(v, 4) for v in values]}

    pml = [r["pml"] for r in rows]
    dml = [r["dmlbench"] for r in rows]
    ratios = [d["train_s"] / p["train_s"] for p, d in zip(pml, dml)]
    step_ratios = [d["median_step_s"] / p["median_step_s"] for p, d in zip(pml, dml)]
    p_pml, p_dml = ci([p["p_at_1"] for p in pml]), ci([d["p_at_1"] for d in dml])
    overlap = abs(p_pml["mean"] - p_dml["mean"]) <= p_pml["ci95"] + p_dml["ci95"]
    return {
        "train_s_per_epoch": {"pml": ci([p["train_s"] for p in pml]), "dmlbench": ci([d["train_s"] for d in dml])},
        "train_ratio_dmlbench_over_pml": ci(ratios),
        "goal_ratio_at_most_1": bool(ci(ratios)["mean"] <= 1.0),
        "median_step_s": {"pml": ci([p["median_step_s"] for p in pml]),
                          "dmlbench": ci([d["median_step_s"] for d in dml])},
        "median_step_ratio_dmlbench_over_pml": ci(step_ratios),
        "wall_s": {"pml_script": ci([p["wall_s"] for p in pml]), "bench_run": ci([d["wall_s"] for d in dml])},
        "eval_s": {"pml_test": ci([p["test_s"] for p in pml]), "dmlbench_evaluation": ci([d["eval_s"] for d in dml])},
        "p_at_1": {"pml": p_pml, "dmlbench": p_dml, "intervals_overlap": bool(overlap)},
        "dmlbench_own_metrics": {"precision@1_within_test": ci([d["dmlbench_precision@1"] for d in dml]),
                                 "map@r": ci([d["dmlbench_map@r"] for d in dml])},
    }


def interleaved_summary(runs: list[dict]) -> dict:
    """The interleaved runs' ratios (dmlbench over PML, first block left out), mean and 95% t-interval."""
    from dmlbench.report.stats import t_interval

    ratios = [r["without_first_block"]["ratio"] for r in runs]
    mean, _, half = t_interval(ratios)
    return {"mean": round(mean, 4), "ci95": round(half, 4), "values": ratios}


def main() -> None:
    """Alternate the two arms seed by seed and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pml_side_by_side.json"))
    ap.add_argument("--steps", type=int, default=None, help="stop each epoch after this many steps (a quick try)")
    # One run of arm (a), or of both loops interleaved, in a process of its own.
    ap.add_argument("--arm", choices=["pml", "interleaved"], help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data_dir = Path(args.data_dir).resolve()
    if args.arm == "pml":
        print(json.dumps(pml_arm(data_dir, args.seed, args.threads, args.batch_size, args.lr, args.steps)))
        return
    if args.arm == "interleaved":
        steps = args.steps or -(-len(read_idx(data_dir / "mnist" / "train-labels-idx1-ubyte.gz")) // args.batch_size)
        print(json.dumps(interleaved(data_dir, args.seed, args.threads, args.batch_size, steps, args.lr)))
        return

    seeds = [int(s) for s in args.seeds.split(",")]
    n_train = len(read_idx(data_dir / "mnist" / "train-labels-idx1-ubyte.gz"))
    steps = args.steps or -(-n_train // args.batch_size)  # the DataLoader's batches in an epoch: 235, the last of 96
    info = machine(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pml-side-by-side-") as tmp:
        # The raw floor of every seed first, untimed: each timed `bench run` then trains and evaluates only the PML method.
        for seed in seeds:
            subprocess.run(bench_args(data_dir, Path(tmp) / f"s{seed}", seed, args.threads, args.batch_size, steps,
                                      args.lr, methods="raw"), check=True, capture_output=True)
        for i, seed in enumerate(seeds):
            row = {"seed": seed}
            order = ("pml", "dmlbench") if i % 2 == 0 else ("dmlbench", "pml")  # alternate who goes first
            for arm in order:
                load_before = os.getloadavg()[0]
                log = Path(tmp) / f"steps-{arm}-{seed}.json"
                env = {**os.environ, "PML_SIDE_BY_SIDE_STEPS": str(log)}
                if arm == "pml":
                    t0 = time.perf_counter()
                    r = subprocess.run([sys.executable, __file__, "--arm", "pml", "--seed", str(seed), "--data-dir",
                                        str(data_dir), "--threads", str(args.threads), "--batch-size",
                                        str(args.batch_size), "--lr", str(args.lr),
                                        *(["--steps", str(args.steps)] if args.steps else [])],
                                       capture_output=True, text=True, env=env)
                    if r.returncode:
                        raise SystemExit(f"the PML loop failed: {r.stderr[-2000:]}")
                    row["pml"] = {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}
                else:
                    out = Path(tmp) / f"s{seed}"
                    row["dmlbench"] = dmlbench_arm(bench_args(data_dir, out, seed, args.threads, args.batch_size,
                                                              steps, args.lr), out, env)
                row[arm]["median_step_s"] = median_step(log, args.batch_size)
                # The 1-minute load average around the arm: other jobs on the machine slow either arm alike.
                row[arm]["load_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                print(f"seed {seed} {arm}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                                           for k, v in row[arm].items() if k != "stdout_tail"}),
                      file=sys.stderr)
            row["order"] = list(order)
            rows.append(row)
        mixed = []
        for seed in seeds:
            r = subprocess.run([sys.executable, __file__, "--arm", "interleaved", "--seed", str(seed), "--data-dir",
                                str(data_dir), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                                "--lr", str(args.lr), *(["--steps", str(args.steps)] if args.steps else [])],
                               capture_output=True, text=True, check=True)
            mixed.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"seed {seed} interleaved: {json.dumps(mixed[-1]['without_first_block'])}", file=sys.stderr)
        overhead = input_path(data_dir, args.threads, args.batch_size, steps)
    result = {"what": "dmlbench (bench run, plugin encoder, pml:TripletMarginLoss) against PML's TripletMarginLoss "
                      "MNIST example loop: one epoch, batch 256, Adam lr 0.01, semihard TripletMarginMiner(0.2), "
                      "TripletMarginLoss(0.2), CosineSimilarity",
              "machine": info, "steps": steps, "batch_size": args.batch_size, "seeds": seeds,
              "command_b": " ".join(bench_args(data_dir, Path("OUT"), seeds[0], args.threads, args.batch_size, steps,
                                               args.lr)[1:]),
              "summary": {**summary(rows), "interleaved_ratio_without_first_block": interleaved_summary(mixed)},
              "interleaved": mixed, "input_path_per_epoch": overhead,
              "load_average_at_end": os.getloadavg(), "runs": rows}
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
