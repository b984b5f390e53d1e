"""Numbers in prose, generated: the README's and the docs' tables and figures' numbers are filled
from the committed results and ``benchmarks/results/`` files, never typed.

A page marks what is generated with HTML comments (invisible in rendered Markdown):

- ``<!-- dmlbench:table FOLDER [metrics=a,b] [spread=ci] -->`` ... ``<!-- /dmlbench:table -->``: the
  results table of the suite folder FOLDER (relative to the repository), as ``bench table`` prints it
  for that folder's own runs;
- ``<!-- dmlbench:value FILE KEY[.KEY...] [FORMAT] -->`` 12.3 ``<!-- /dmlbench:value -->``: one
  value of a JSON file, formatted with a Python format spec (default ``g``);
- ``<!-- dmlbench:ranks FOLDER [FOLDER...] [metric=map@r] -->`` ... ``<!-- /dmlbench:ranks -->``: the
  methods' ranks on each dataset of the folders' runs, their average ranks, the Friedman test and
  the Nemenyi critical difference, as ``bench compare`` computes them.

``python -m dmlbench.report.fill README.md docs/*.md`` rewrites them; ``--check`` only reports
what differs (the tests run it: a typed-over number fails them).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import write_text
from dmlbench.report.compare import compare
from dmlbench.report.results import collect
from dmlbench.report.table import aggregate, format_table, table_notes

BLOCK = re.compile(r"(<!-- dmlbench:(table|value|ranks) ([^>]*?) -->)(.*?)(<!-- /dmlbench:\2 -->)", re.S)


def _table(root: Path, args: list[str]) -> str:
    folder = root / args[0]
    opts = dict(a.split("=", 1) for a in args[1:])
    metrics = opts["metrics"].split(",") if "metrics" in opts else None
    runs = collect(folder, recursive=False)
    if not len(runs):
        raise DMLBenchError(f"{folder} holds no runs for the table asked of it")
    agg = aggregate(runs, metrics)
    text = format_table(agg, "markdown", metrics, spread=opts.get("spread", "ci")).rstrip()
    notes = table_notes(agg, metrics)
    return "\n" + text + "".join("\n\n" + n for n in notes) + "\n"


def _value(root: Path, args: list[str]) -> str:
    path, key = root / args[0], args[1]
    fmt = args[2] if len(args) > 2 else "g"
    try:
        value = json.loads(path.read_text())
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise DMLBenchError(f"{path}: no value at {key} ({type(e).__name__}: {e})") from None
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def _ranks(root: Path, args: list[str]) -> str:
    folders = [root / a for a in args if "=" not in a]
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    metric = opts.get("metric", "map@r")
    result = compare(folders, metric, n_boot=0)
    fr = result["friedman"]
    if fr is None:
        raise DMLBenchError(f"{', '.join(args)}: the Friedman test needs 2 datasets and 3 methods every dataset has")
    # The ranks the test uses: among the methods every dataset has (ties share their average rank).
    table = fr["ranks"].T.loc[fr["methods"]]
    table = table[sorted(table.columns)]
    table.insert(len(table.columns), "average rank", [fr["avg_ranks"][m] for m in fr["methods"]])
    lines = [f"| method | {' | '.join(f'{c} rank' if c != 'average rank' else c for c in table.columns)} |",
             "| --- |" + " --- |" * len(table.columns)]
    for method, row in table.iterrows():
        cells = [f"{v:g}" if c != "average rank" else f"{v:.2f}" for c, v in row.items()]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    left_out = sorted(set(result["ranking"]["method"]) - set(fr["methods"]))
    lines += ["", f"Ranks by {metric} among the methods every dataset has (1 best). Friedman over {fr['n_blocks']} "
                  f"datasets: χ² = {fr['statistic']:.2f}, p = {fr['p_value']:.3g}; Nemenyi critical difference at "
                  f"α = {fr['alpha']}: {fr['cd']:.2f}."
              + (f" Left out (not run on every dataset): {', '.join(left_out)}." if left_out else "")]
    return "\n" + "\n".join(lines) + "\n"


def fill_text(text: str, root: Path) -> str:
    """The page with every generated block filled from the files under ``root``."""
    def repl(m: re.Match) -> str:
        args = m.group(3).split()
        body = {"table": _table, "value": _value, "ranks": _ranks}[m.group(2)](root, args)
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(repl, text)


def fill(paths: list[Path], root: Path, check: bool = False) -> list[Path]:
    """Fill the pages (or, with ``check``, only compare); returns the pages whose text differs."""
    changed = []
    for p in map(Path, paths):
        old = p.read_text()
        new = fill_text(old, root)
        if new != old:
            changed.append(p)
            if not check:
                write_text(p, new)
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m dmlbench.report.fill [--check] PAGE...`` (run from the repository)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in argv
    pages = [a for a in argv if a != "--check"]
    changed = fill([Path(p) for p in pages], Path.cwd(), check)
    for p in changed:
        print(f"{p}: {'differs from' if check else 'filled from'} its files")
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
