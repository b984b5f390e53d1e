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
