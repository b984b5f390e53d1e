"""Exact search against float64 brute force at every scale (issue #31): 2,000 queries, 20,000
references, k = 10, at d = 2 and d = 512; Gaussians at scales 1e-23, 1e-20, 1 and 1e17, far from the
origin (offset 1e4), with copies (every reference 20 times, and 1,000 times), and on a 2-d lattice
where every distance is shared by many references. Each case records the rows whose list differs from
brute force's (ids and order), and the search's seconds.

    python benchmarks/exact_search.py [--threads 2] [--device cpu]

The float64 reference: a float64 matrix product proposes each row's 60 nearest, whose distances are
recomputed as sums of squared differences in float64 and ordered by (distance, id). A row whose
60th proposed distance lies within the product's rounding of its 10th is compared with every
reference instead (the lattice and the copies), so the reference is brute force's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def brute64(q: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    q64, r64 = q.astype(np.float64), ref.astype(np.float64)
    r_sq = (r64 * r64).sum(1)
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), 200):
        qb = q64[s:s + 200]
        q_sq = (qb * qb).sum(1)
        est = q_sq[:, None] + r_sq[None] - 2 * qb @ r64.T
        cand = np.argpartition(est, 60, axis=1)[:, :60]
        slack = 1e-10 * (q_sq[:, None] + r_sq.max())
        for j, row in enumerate(cand):
            e = est[j]
            exact = ((qb[j] - r64[row]) ** 2).sum(1)
            kth = np.sort(exact)[k - 1]
            if (e[np.setdiff1d(np.arange(len(ref)), row)] <= kth + 2 * slack[j]).any():
                row = np.arange(len(ref))
                exact = ((qb[j] - r64) ** 2).sum(1)
            order = np.lexsort((row, exact))[:k]
            out[s + j] = row[order]
    return out


def scaled(x, scale=1.0, offset=0.0):
    return (x.astype(np.float64) * scale + offset).astype(np.float32)


def cases(nq: int, nr: int):
    rng = np.random.default_rng(0)
    for dim in (2, 512):
        q, r = rng.normal(size=(nq, dim)), rng.normal(size=(nr, dim))
        copies = np.concatenate([r[:nr // 20]] * 20)
        for scale in (1e-23, 1e-20, 1.0, 1e17):
            yield dim, f"scale {scale:g}", scaled(q, scale), scaled(r, scale)
        yield dim, "offset 1e4", scaled(q, offset=1e4), scaled(r, offset=1e4)
        yield dim, "copies x20", scaled(q), scaled(copies)
        yield dim, "copies x20 at 1e-20", scaled(q, 1e-20), scaled(copies, 1e-20)
        yield dim, "copies x20 offset 1e4", scaled(q, offset=1e4), scaled(copies, offset=1e4)
    g = np.stack(np.meshgrid(np.arange(142), np.arange(142)), -1).reshape(-1, 2)[:nr]
    pick = rng.choice(len(g), nq, replace=False)
    yield 2, "lattice", scaled(g[pick]), scaled(g)
    yield 2, "lattice offset 1e4", scaled(g[pick], offset=1e4), scaled(g, offset=1e4)
    yield 2, "copies x1000 offset 1e4", scaled(rng.normal(size=(nq, 2)), offset=1e4), \
        scaled(np.concatenate([rng.normal(size=(nr // 1000, 2))] * 1000), offset=1e4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--refs", type=int, default=20000)
    args = ap.parse_args()

    from dmlbench.core.runtime import set_threads
    from dmlbench.evaluation.exact_search import search
    from dmlbench.running.provenance import provenance

    set_threads(args.threads)
    rows = {}
    for dim, name, q, ref in cases(args.queries, args.refs):
        t0 = time.perf_counter()
        _, ids = search(q, ref, 10, device=args.device)
        seconds = time.perf_counter() - t0
        want = brute64(q, ref, 10)
        key = f"d{dim}-" + name.replace(" ", "-")
        rows[key] = {"seconds": round(seconds, 2), "rows_differing": int((ids != want).any(1).sum()),
                     "sets_differing": int(sum(set(a) != set(b) for a, b in zip(ids, want)))}
        print(key, rows[key], flush=True)
    slowest = max(rows, key=lambda c: rows[c]["seconds"])
    out = {"what": f"{args.queries:,} queries x {args.refs:,} references, k = 10, against float64 brute force",
           "summary": {"cases": len(rows), "rows_differing": sum(r["rows_differing"] for r in rows.values()),
                       "slowest_case": slowest, "slowest_seconds": rows[slowest]["seconds"],
                       "lattice_seconds": rows["d2-lattice"]["seconds"]},
           "cases": rows, "provenance": provenance(args.device, args.threads)}
    dest = ROOT / "benchmarks" / "results" / f"exact_search-{args.device.replace(':', '')}.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
