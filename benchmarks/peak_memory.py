"""Peak memory of a command and its child processes, split into anonymous memory and file-backed
pages (a memory-mapped dataset cache counts in RSS, but its clean pages are the kernel's to drop).

    python benchmarks/peak_memory.py [--every 0.2] -- bench run --dataset zappos50k ...

Samples /proc/PID/status (RssAnon, RssFile, RssShmem) of the command's process tree and prints one
JSON line: the peaks of their sums and the wall time. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def sample(pid: int) -> dict[str, int]:
    total = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in total:
                    total[key] += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=float, default=0.2)
    ap.add_argument("--trace", default=None, help="also write every sample (seconds, anon, file in MB) to this CSV")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = {"rss": 0, "anon": 0, "file": 0}
    trace = open(args.trace, "w") if args.trace else None  # noqa: SIM115 (closed below)
    if trace:
        trace.write("seconds,anon_mb,file_mb\n")
    while proc.poll() is None:
        s = sample(proc.pid)
        if trace:
            trace.write(f"{time.perf_counter() - t0:.1f},{(s['RssAnon'] + s['RssShmem']) // 1000},{s['RssFile'] // 1000}\n")
        peak["rss"] = max(peak["rss"], sum(s.values()))
        peak["anon"] = max(peak["anon"], s["RssAnon"] + s["RssShmem"])
        peak["file"] = max(peak["file"], s["RssFile"])
        time.sleep(args.every)
    if trace:
        trace.close()
    print(json.dumps({"command": " ".join(cmd), "exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
                      **{f"peak_{k}_gb": round(v / 1e6, 3) for k, v in peak.items()}}))


if __name__ == "__main__":
    main()
