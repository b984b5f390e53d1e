"""N-pair loss per step: PML's NPairsLoss called per class group (as dmlbench did until
2026-12-01) against the batched ``npair_groups`` (loss and backward, one MNIST-sized step: 6 groups
of 10 classes x 2 images, 20-d embeddings).

    python benchmarks/npair_loss.py [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.losses import NPairsLoss

from dmlbench.methods.npair import npair_groups


def per_step_ms(fn, device: str, n: int = 300) -> float:
    for _ in range(20):
        fn().backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn().backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    y = torch.stack([torch.arange(10).repeat_interleave(2)[torch.randperm(20, generator=gen)] for _ in range(6)])
    y = y.to(args.device)
    emb = torch.randn(6, 20, 20, generator=gen).to(args.device).requires_grad_()
    pml = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    looped = per_step_ms(lambda: torch.stack([pml(emb[i], y[i]) for i in range(len(y))]).mean(), args.device)
    batched = per_step_ms(lambda: npair_groups(emb, y), args.device)
    print(f"{args.device}: PML per group {looped:.2f} ms a step, batched {batched:.2f} ms ({looped / batched:.1f}x)")


if __name__ == "__main__":
    main()
