"""Run a dmlbench command in a fresh interpreter and check which heavy modules it imported."""

from __future__ import annotations

import subprocess
import sys


def run_fresh(argv: list[str], forbidden: tuple[str, ...] = ("torch",), timeout: float = 300) -> None:
    """Run ``bench ARGV`` through the Typer app in a new Python process; it must exit 0 and leave none
    of ``forbidden`` in ``sys.modules`` (what the command itself imported, not pytest)."""
    code = ("import sys; from dmlbench.cli import app\n"
            f"sys.argv = ['bench'] + {list(argv)!r}\n"
            "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"bad = [m for m in {tuple(forbidden)!r} if m in sys.modules]\n"
            "assert not bad, f'imported {bad}'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]


def run_at_once(argv: list[str], n: int, barrier_dir, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run ``bench ARGV`` in ``n`` new Python processes that start the command at the same moment:
    each imports dmlbench (and torch, optuna) first, then waits at a file barrier in
    ``barrier_dir`` until all are ready, so their imports do not spread the starts apart."""
    code = ("import os, sys, time\nfrom pathlib import Path\nimport optuna, torch\nfrom dmlbench.cli import app\n"
            "barrier, i, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])\n"
            "(barrier / f'ready-{i}').touch()\n"
            "while len(list(barrier.glob('ready-*'))) < n:\n    time.sleep(0.001)\n"
            f"sys.argv = ['bench'] + {list(argv)!r}\n"
            "app()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(barrier_dir), str(i), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out
