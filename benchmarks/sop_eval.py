"""Retrieval metrics at Stanford Online Products scale (issue #8's target: <= 4 GB peak RSS, <= 60 s
on 2 cores): 60,502 test queries of 512-d embeddings over 11,316 classes of 2-12 images, as SOP's
test split has. Embeddings are random but clustered by class, so neighbour lists are realistic.

    python benchmarks/sop_eval.py [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np


def sop_shaped_labels(n_classes: int = 11_316, n: int = 60_502, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = np.full(n_classes, 2)
    extra = rng.choice(n_classes, n - sizes.sum(), replace=True)
    np.add.at(sizes, extra, 1)
    sizes = np.minimum(sizes, 12)
    while sizes.sum() < n:  # top up the capped ones elsewhere
        room = np.flatnonzero(sizes < 12)
        sizes[rng.choice(room, min(len(room), n - sizes.sum()), replace=False)] += 1
    return np.repeat(np.arange(n_classes), sizes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    from dmlbench.evaluation.neighbors import retrieval_metrics

    y = sop_shaped_labels()
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(y.max() + 1, args.dim)).astype(np.float32)
    emb = centres[y] + rng.normal(scale=1.5, size=(len(y), args.dim)).astype(np.float32)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    summary, per_query = retrieval_metrics(emb, y, device=args.device)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"what": f"{len(y):,} x {args.dim} embeddings, {y.max() + 1:,} classes of {np.bincount(y).min()}-"
                   f"{np.bincount(y).max()} images, leave-one-out retrieval (recall@1-8, MAP@R, R-precision)",
           "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 2), "rss_before_gb": round(rss_before, 2),
           "threads": args.threads, "device": args.device, "cpu": platform.processor() or platform.machine(),
           "metrics": {k: round(float(v), 4) for k, v in summary.items()}}
    print(json.dumps(out, indent=1))
    dest = Path(__file__).parent / "results" / "sop_eval.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
