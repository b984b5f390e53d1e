"""Wall time of the default test suite and its 15 slowest tests (a benchmark script, never a timed
test). Run it with nothing else running, from the repository:

    python benchmarks/test_suite.py [--data-dir ../shared/data] [-- extra pytest arguments]

It runs ``python -m pytest --durations=15`` (the README's test command plus the durations) with the
real MNIST, and writes what pytest printed from the durations on, with the wall time, the commit,
the load average before and after and the machine, to benchmarks/results/test_suite-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "test_suite-cpu.json"))
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args()
    env = dict(os.environ, DMLBENCH_DATA_DIR=str(Path(a.data_dir).resolve()), DMLBENCH_REQUIRE_DATA="1")
    load_before = os.getloadavg()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=15", *a.pytest_args],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    out = r.stdout
    tail = out[out.find("slowest 15 durations") - 30:] if "slowest 15 durations" in out else out[-4000:]
    doc = {
        "what": "the default test suite (python -m pytest, as the README runs it) with --durations=15",
        "exit": r.returncode, "wall_s": round(wall, 1), "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
                    "date": time.strftime("%Y-%m-%d %H:%M")},
        "target_s": 150,
        "pytest_tail": tail.splitlines(),
    }
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("exit", "wall_s", "load_average_before", "load_average_after")}))
    print(tail)
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
