"""Time the linear-SVM probe (dmlbench.evaluation.probe.linear_probe) at MNIST scale.

    python benchmarks/probe_speed.py [--mnist DIR] [--threads N]

Cases: 60k x 20 clustered Gaussian features (an embedding: liblinear path) and 60k x 784 (raw
pixels: L-BFGS path), each with a 10k test set and the full lambda grid chosen by 3-fold CV on 5,000
training rows. The 784-d case uses real MNIST pixels when ``--mnist`` names a folder holding the
``*-idx?-ubyte.gz`` files (read directly here, independent of dmlbench.data), otherwise clustered
Gaussian features. Not a test: it prints seconds.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

from dmlbench.evaluation.probe import linear_probe


def clustered(n: int, d: int, classes: int = 10, spread: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(classes, d))
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)


def mnist(folder: Path):
    def part(prefix):
        x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        return x.reshape(len(x), -1).astype(np.float32) / 255.0, y.astype(np.int64)

    return (*part("train"), *part("t10k"))


def run(name, xtr, ytr, xte, yte, threads):
    t = time.perf_counter()
    r = linear_probe(xtr, ytr, xte, yte, seed=0, threads=threads)
    sec = time.perf_counter() - t
    cv = ", ".join(f"{k:g}: {v:.4f}" for k, v in r.cv_accuracy.items())
    print(f"{name:32s} {sec:8.1f} s  solver={r.solver:9s} lambda={r.lam:g}  test acc={r.accuracy:.4f}  cv={{{cv}}}",
          flush=True)
    return sec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, default=None, help="folder with MNIST *-ubyte.gz (784-d case on real pixels)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    x, y = clustered(70_000, 20, spread=1.0)
    run("60k x 20 clustered", x[:60_000], y[:60_000], x[60_000:], y[60_000:], args.threads)
    if args.mnist is not None:
        run("60k x 784 MNIST pixels", *mnist(args.mnist), args.threads)
    else:
        x, y = clustered(70_000, 784, spread=0.12)
        run("60k x 784 clustered", x[:60_000], y[:60_000], x[60_000:], y[60_000:], args.threads)


if __name__ == "__main__":
    main()
