"""Training speed on a timm trunk (issue #9): the harness (Trainer.fit: class-balanced sampling,
uint8 gather, float conversion and the mlrc augmentation on the device) against a bare PyTorch
loop over the same uint8 batches with the same augmentation. Needs the vision extra.

    python benchmarks/trunk_speed.py --model resnet18 --size 64 --batch 32 --steps 30          # CPU
    python benchmarks/trunk_speed.py --model resnet50 --size 224 --batch 32 --steps 50 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from dmlbench.blocks.sampling import ClassIndex
    from dmlbench.core.runtime import epoch_generator, set_threads
    from dmlbench.data import Data, Part
    from dmlbench.running.config import RunConfig
    from dmlbench.running.runner import build_method
    from dmlbench.training.augment import train_transform
    from dmlbench.training.trainer import Trainer, make_optimizer

    set_threads(args.threads)
    stored = int(args.size * 256 / 224)  # the cache holds larger images; mlrc crops them
    rng = np.random.default_rng(0)
    n, classes = 2000, 50
    y = np.repeat(np.arange(classes), n // classes).astype(np.int64)
    x = rng.integers(0, 256, (n, 3, stored, stored), dtype=np.uint8)
    data = Data("synthetic", Part(x, y), Part(x[:100], y[:100]), classes=[str(i) for i in range(classes)])
    cfg = RunConfig(dataset="digits", method="pml:MultiSimilarityLoss", encoder=f"timm:{args.model}",
                    embedding_dim=128, image_size=args.size, augment="mlrc", batch_size=args.batch,
                    steps=args.steps, epoch_size=args.steps * args.batch, optimizer="rmsprop", lr=1e-6,
                    device=args.device)
    method = build_method(cfg, data)
    warm = Trainer(build_method(cfg, data), data, RunConfig(**{**cfg.to_dict(), "steps": 3,
                                                               "epoch_size": 3 * args.batch}).train_config(), device=args.device)
    warm.fit()

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    Trainer(method, data, cfg.train_config(), device=args.device).fit()
    sync()
    harness = time.perf_counter() - t0

    method = build_method(cfg, data).to(args.device)
    kind = method.batch_kind
    index = ClassIndex(data.train.y)
    layout = kind.layout(cfg.batch_size, classes)
    idx = kind.epoch_indices(index, n, layout, args.steps, epoch_generator(0, 0, 0))
    xs = torch.from_numpy(x).to(args.device)
    ys = torch.from_numpy(y).to(args.device)
    opt = make_optimizer(method, cfg.train_config())
    gen = epoch_generator(0, 0, 1)
    method.train()
    t0 = time.perf_counter()
    for s in range(args.steps):
        i = idx[s].to(args.device)
        xb = train_transform(xs[i].float().mul_(1 / 255), "mlrc", (args.size, args.size), gen)
        terms = method.loss_terms(kind.batch(xb, ys[i], layout))
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    bare = time.perf_counter() - t0
    per_step = layout.per_step
    out = {"model": args.model, "size": args.size, "batch": per_step, "steps": args.steps, "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "threads": args.threads, "torch": torch.__version__,
           "harness_images_per_s": round(args.steps * per_step / harness, 1),
           "bare_images_per_s": round(args.steps * per_step / bare, 1), "ratio": round(harness / bare, 3)}
    print(json.dumps(out, indent=1))
    dest = Path(__file__).parent / "results" / f"trunk_speed-{args.model}-{args.size}-{args.device.replace(':', '')}.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
