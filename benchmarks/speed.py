"""Speed figures of the README (a benchmark script, never a timed test). Run it with nothing else
running; it prints a JSON summary and writes it to benchmarks/results/speed-<host>.json.

    python benchmarks/speed.py --data-dir ../shared/data [--device cuda] [--parts train,eval,cli,workers]

- train: steps per second of the harness (Trainer.fit: index sampling, uint8 gather, float
  conversion on the device) against a bare PyTorch loop over the same float tensor and the same
  indices, per method, convnet on MNIST;
- eval: one MNIST evaluation, all metrics, for a 20-d embedding and for raw pixels, with the
  time of each part (the median of --eval-reps); for the convnet also the embedding passes alone and their floor (the
  encoder's multiply-adds at the measured float32 matrix-product rate);
- cli: wall time of `bench list` and `bench table` (commands that must not import torch);
- workers: the digits suite with --workers 1 and --workers 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_part(data_dir: str, device: str, steps: int, methods: list[str]) -> list[dict]:
    import torch

    from dmlbench.blocks.sampling import ClassIndex
    from dmlbench.core.runtime import epoch_generator
    from dmlbench.data import load_dataset
    from dmlbench.running.config import RunConfig
    from dmlbench.running.runner import build_method
    from dmlbench.training.trainer import Trainer, make_optimizer

    data = load_dataset("mnist", data_dir=data_dir)
    rows = []
    for name in methods:
        cfg = RunConfig(dataset="mnist", method=name, encoder="convnet", embedding_dim=20, steps=steps,
                        epoch_size=steps * 128, batch_size=128, device=device).resolved()
        method = build_method(cfg, data)
        t0 = time.perf_counter()
        Trainer(method, data, cfg.train_config(), device=device).fit()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        harness = time.perf_counter() - t0
        # The bare loop: the same model, indices and loss, from a float tensor already on the device.
        method = build_method(cfg, data)
        method.to(device)
        kind = method.batch_kind
        index = ClassIndex(data.train.y) if kind.needs_index else None
        layout = kind.layout(cfg.batch_size, int((index.counts >= 2).sum()) if index is not None else 10)
        idx = kind.epoch_indices(index, len(data.train), layout, steps, epoch_generator(cfg.seed, 0, 0))
        x = torch.from_numpy(data.train.images()).to(device).float().mul_(data.scale)
        y = torch.from_numpy(data.train.y).to(device)
        opt = make_optimizer(method, cfg.train_config())
        method.train()
        t0 = time.perf_counter()
        for s in range(steps):
            i = idx[s].to(device)
            terms = method.loss_terms(kind.batch(x[i], y[i], layout))
            loss = sum(method.weights[k] * v for k, v in terms.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        bare = time.perf_counter() - t0
        rows.append({"method": name, "batch_kind": kind.describe(), "steps": steps, "harness_s": round(harness, 3),
                     "bare_s": round(bare, 3), "ratio": round(harness / bare, 3)})
        print(rows[-1], file=sys.stderr)
    return rows


def eval_part(data_dir: str, device: str, reps: int = 3) -> list[dict]:

    import torch

    from dmlbench.blocks.sampling import random_triplets
    from dmlbench.data import load_dataset
    from dmlbench.evaluation.evaluate import evaluate
    from dmlbench.running.config import RunConfig
    from dmlbench.running.runner import build_method

    data = load_dataset("mnist", data_dir=data_dir)
    triplets = random_triplets(torch.from_numpy(data.test.y), 10_000, torch.Generator().manual_seed(0)).numpy()
    rows = []
    for name in ("triplet-hinge", "raw"):
        cfg = RunConfig(dataset="mnist", method=name, encoder="convnet", embedding_dim=20, device=device).resolved()
        method = build_method(cfg, data).to(device)
        runs = []
        for _ in range(reps):  # this machine's speed drifts by 10-20% between minutes: the median run
            t0 = time.perf_counter()
            ctx = evaluate(method, data, cfg.eval_config(), triplets, device)
            total = time.perf_counter() - t0
            t = ctx.extras["timings"]
            runs.append({"method": name, "dim": int(ctx.test_emb().shape[1]), "total_s": round(total, 2),
                         **{k: round(v, 2) for k, v in t.items() if v > 0.05}})
            del ctx
        runs.sort(key=lambda r: r["total_s"])
        rows.append({**runs[len(runs) // 2], "runs_total_s": [r["total_s"] for r in runs]})
        if name != "raw":
            rows[-1].update(_forward_floor(method, data, device))
        print(rows[-1], file=sys.stderr)
    return rows


def _forward_floor(method, data, device: str) -> dict:
    """The embedding passes' share of an evaluation, against the least time the encoder's
    multiply-adds can take at this machine's measured float32 matrix-product rate: an evaluation
    target below that floor cannot be met at float32 on this device."""
    import torch
    from torch import nn

    from dmlbench.evaluation.evaluate import embed_part
    from dmlbench.training.inputs import InputPipeline

    macs = 0

    def count(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    hooks = [m.register_forward_hook(count) for _, m in method.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    pipeline = InputPipeline(data, "none", method.input_shape[1:])
    t0 = time.perf_counter()
    for part in (data.test, data.train):
        embed_part(method, part, pipeline, device)
    embed_s = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    a = torch.randn(4096, 3136, device=device)
    b = torch.randn(3136, 1024, device=device)
    best = float("inf")
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    gflops = 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9
    images = len(data.test) + len(data.train)
    return {"embed_s": round(embed_s, 2), "images": images, "mflop_per_image": round(2 * macs / images / 1e6, 2),
            "matmul_gflops": round(gflops, 1), "embed_floor_s": round(2 * macs / gflops / 1e9, 2)}


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def cli_part(results: str) -> dict:
    bench = str(Path(sys.executable).parent / "bench")
    return {"bench list": _wall([bench, "list"]), f"bench table {results}": _wall([bench, "table", results])}


def workers_part(tmp: Path, reps: int = 3) -> dict:
    """The digits suite with --workers 1 and 2, alternated ``reps`` times (each into a fresh
    folder): the runs are short, so one measurement each is mostly noise."""
    import statistics

    bench = str(Path(sys.executable).parent / "bench")
    walls: dict[int, list[float]] = {1: [], 2: []}
    for r in range(reps):
        for w in (1, 2):
            walls[w].append(_wall([bench, "run", "--workers", str(w), "--threads", "2",
                                   "--out", str(tmp / f"w{w}-{r}")]))
    return {f"digits suite, --workers {w}": {"median_s": round(statistics.median(v), 2), "runs_s": v}
            for w, v in walls.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--methods", default="siamese,triplet-softmax,triplet-hinge,npair,vae,tvae")
    ap.add_argument("--parts", default="train,eval,cli,workers")
    ap.add_argument("--results", default="results/mnist/tvae-paper")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-reps", type=int, default=3, help="evaluations per method; the median is reported")
    ap.add_argument("--out", default=None, help="JSON file [default: benchmarks/results/speed-<device>.json]")
    args = ap.parse_args()
    from dmlbench.core.runtime import set_threads

    set_threads(args.threads)
    parts = args.parts.split(",")
    out: dict = {"machine": {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                             "python": platform.python_version(), "threads": args.threads, "device": args.device}}
    import torch

    out["machine"]["torch"] = torch.__version__
    if args.device.startswith("cuda"):
        out["machine"]["gpu"] = torch.cuda.get_device_name(0)
    if "train" in parts:
        out["train"] = train_part(args.data_dir, args.device, args.steps, args.methods.split(","))
    if "eval" in parts:
        out["eval"] = eval_part(args.data_dir, args.device, args.eval_reps)
    if "cli" in parts:
        out["cli"] = cli_part(args.results)
    if "workers" in parts:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out["workers"] = workers_part(Path(tmp))
    dest = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"speed-{args.device.replace(':', '')}.json"
    out = _merge_parts(dest, out, [p for p in ("train", "eval", "cli", "workers") if p in parts])
    text = json.dumps(out, indent=1)
    print(text)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text + "\n")


def _merge_parts(dest: Path, out: dict, ran: list[str]) -> dict:
    """Parts not run this time keep their figures from ``dest``; ``measured`` says when and at which
    commit each part was measured, so figures from different code versions are never mistaken for one."""
    try:
        old = json.loads(dest.read_text())
    except (OSError, ValueError):
        old = {}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    stamp = {"commit": commit + ("+changes" if dirty else ""), "date": time.strftime("%Y-%m-%d")}
    measured = dict(old.get("measured", {}))
    merged = {"machine": out["machine"]}
    for part in ("train", "eval", "cli", "workers"):
        if part in ran:
            merged[part] = out[part]
            measured[part] = stamp
        elif part in old:
            merged[part] = old[part]
    merged["measured"] = measured
    return merged


if __name__ == "__main__":
    main()
