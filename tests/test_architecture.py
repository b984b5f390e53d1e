"""The house rules, read from the source: stages as subpackages, no import cycle, imports at the
top, no private name crossing a module, and docstrings on the public definitions.

The graph is read with ``ast`` (imports inside functions too), with the package mapping of
pyproject (``bench/`` -> ``dmlbench``, ``methods/`` -> ``dmlbench.methods``, ``datasets/`` ->
``dmlbench.data``), so nothing the mapping hides is missed.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"bench": "dmlbench", "methods": "dmlbench.methods", "datasets": "dmlbench.data"}
# Libraries that cost seconds to import or are optional extras: a module that imports one at its
# top is "heavy", and a torch-free command (bench list, table, compare, a pool's driver) imports it
# only inside the function that needs it.
HEAVY = ("torch", "torchvision", "faiss", "optuna", "ray", "timm", "sklearn", "matplotlib", "seaborn", "scipy.stats",
         "mlflow", "tensorboard", "onnx", "onnxruntime", "safetensors", "PIL")
# Stage rules (issue: training knows no evaluation or report; the report stage reads files only).
NO_TORCH = ("dmlbench.report", "dmlbench.running.layout", "dmlbench.core")
FORBIDDEN = {"dmlbench.blocks": ("dmlbench.methods", "dmlbench.training", "dmlbench.evaluation", "dmlbench.report",
                                 "dmlbench.running", "dmlbench.tune", "dmlbench.executors"),
             "dmlbench.training": ("dmlbench.evaluation", "dmlbench.report", "dmlbench.running", "dmlbench.tune",
                                   "dmlbench.executors"),
             "dmlbench.evaluation": ("dmlbench.report", "dmlbench.running", "dmlbench.tune", "dmlbench.executors"),
             "dmlbench.methods": ("dmlbench.training", "dmlbench.evaluation", "dmlbench.report", "dmlbench.running", "dmlbench.tune",
                                  "dmlbench.executors"),
             "dmlbench.data": ("dmlbench.training", "dmlbench.evaluation", "dmlbench.report", "dmlbench.running",
                               "dmlbench.tune", "dmlbench.executors", "dmlbench.methods"),
             "dmlbench.core": ("dmlbench.training", "dmlbench.evaluation", "dmlbench.report", "dmlbench.running",
                               "dmlbench.tune", "dmlbench.executors", "dmlbench.methods", "dmlbench.data"),
             "dmlbench.report": ("dmlbench.training", "dmlbench.tune", "dmlbench.executors")}


def _modname(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    rest = [p for p in parts[1:] if p != "__init__"]
    return ".".join([ROOTS[parts[0]], *rest])


@cache
def modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for folder in ROOTS:
        for p in sorted((REPO / folder).rglob("*.py")):
            out[_modname(p)] = (p, ast.parse(p.read_text(), str(p)))
    return out


def _in_function(node: ast.AST, parents: dict) -> bool:
    """Inside a function; a package's module-level ``__getattr__`` (PEP 562: public names loaded
    on first use, so importing the package stays light) counts as the top."""
    q = parents.get(node)
    while q is not None:
        if isinstance(q, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return not (q.name == "__getattr__" and isinstance(parents.get(q), ast.Module))
        q = parents.get(q)
    return False


def _type_checking(node: ast.AST, parents: dict) -> bool:
    q = parents.get(node)
    while q is not None:
        if isinstance(q, ast.If) and "TYPE_CHECKING" in ast.unparse(q.test):
            return True
        q = parents.get(q)
    return False


@cache
def imports() -> list[tuple[str, str, str | None, bool, int]]:
    """(importer, imported module, imported name or None, inside a function, line) for every import
    of a dmlbench module or third-party library, TYPE_CHECKING blocks left out."""
    mods = modules()
    out = []
    for m, (path, tree) in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        parents = {ch: node for node in ast.walk(tree) for ch in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [(base, a.name) for a in node.names]
            else:
                continue
            if _type_checking(node, parents):
                continue
            inner = _in_function(node, parents)
            for base, name in targets:
                if name and f"{base}.{name}" in mods:
                    out.append((m, f"{base}.{name}", None, inner, node.lineno))
                else:
                    out.append((m, base, name, inner, node.lineno))
    return out


def internal(target: str) -> bool:
    return target == "dmlbench" or target.startswith("dmlbench.")


@cache
def heavy() -> set[str]:
    """Modules that import a heavy library at their top, directly or through their top imports."""
    top = {}
    for m, t, _, inner, _ in imports():
        if not inner:
            top.setdefault(m, set()).add(t)
    out = {m for m, ts in top.items() if any(t == h or t.startswith(h + ".") for t in ts for h in HEAVY)}
    while True:
        more = {m for m, ts in top.items() if m not in out and ts & out}
        if not more:
            return out
        out |= more


def edges() -> set[tuple[str, str]]:
    mods = modules()
    return {(m, t) for m, t, _, _, _ in imports() if t in mods and t != m and not t.startswith(m + ".")}


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for a, b in edges():
        graph[a].add(b)
    # Tarjan's strongly connected components: any with two modules or more is a cycle.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_stages_import_only_what_lies_below_them():
    bad = [f"{a} -> {b}" for a, b in sorted(edges()) for stage, banned in FORBIDDEN.items()
           if (a == stage or a.startswith(stage + ".")) and any(b == x or b.startswith(x + ".") for x in banned)]
    assert not bad, bad


def test_report_results_and_table_import_no_torch():
    bad = sorted(m for m in heavy() if m.startswith(NO_TORCH) and m not in NO_TORCH_EXCEPT)
    assert not bad, bad
    # and for real: reading results and tables imports neither torch nor faiss
    import subprocess
    import sys

    code = ("import sys, dmlbench.report.results, dmlbench.report.table, dmlbench.report.compare; "
            "bad = [m for m in ('torch', 'faiss', 'sklearn') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# Figures draw with matplotlib (heavy, imported where a figure is drawn): the plots package is the
# report stage's one part allowed a heavy import at its top, and still imports no torch.
NO_TORCH_EXCEPT = ("dmlbench.report.plots.cd", "dmlbench.report.plots.figures", "dmlbench.report.plots.tvae",
                   "dmlbench.report.plots.common", "dmlbench.report.plots")


def test_internal_imports_sit_at_the_top_unless_the_module_is_heavy():
    """An import of a dmlbench module inside a function is there only to keep a heavy module
    (one that imports torch, faiss, optuna, ray, timm, ... at its top) out of a torch-free
    command; everything else is imported at the top, where a reader sees the graph."""
    heavy_mods = heavy()
    # The CLI is the exception: each command imports its library function when it runs, so that
    # starting `bench` loads only the options (test_starting_the_cli_loads_no_library_it_may_not_need).
    bad = [f"{m}:{line} imports {t}" for m, t, _, inner, line in imports()
           if inner and internal(t) and t in modules() and t not in heavy_mods and m != "dmlbench.cli"]
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_name_of_another():
    bad = [f"{m}:{line} imports {t}.{name}" for m, t, name, _, line in imports()
           if internal(t) and name and name.startswith("_") and not name.startswith("__") and t != m]
    assert not bad, "\n".join(bad)


def public_definitions() -> list[tuple[str, str, bool]]:
    """(module, qualified name, has a docstring) for public functions, classes and methods."""
    out = []
    for m, (_, tree) in modules().items():
        def walk(body, prefix):
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                        and not node.name.startswith("_"):
                    out.append((m, prefix + node.name, ast.get_docstring(node) is not None))
                    if isinstance(node, ast.ClassDef):
                        walk(node.body, prefix + node.name + ".")
        walk(tree.body, "")
    return out


def test_most_public_definitions_have_a_docstring():
    defs = public_definitions()
    share = sum(d for _, _, d in defs) / len(defs)
    missing = [f"{m}.{n}" for m, n, d in defs if not d]
    assert share >= 0.85, f"{share:.1%} of {len(defs)} public definitions have a docstring; missing: {missing[:40]}"


def test_every_module_has_a_docstring():
    missing = [m for m, (_, tree) in modules().items() if ast.get_docstring(tree) is None]
    assert not missing, missing


@pytest.mark.parametrize("stage", ["core", "blocks", "training", "evaluation", "running", "executors", "tune", "report"])
def test_bench_is_grouped_by_stage(stage):
    assert (REPO / "bench" / stage / "__init__.py").is_file()
    flat = sorted(p.name for p in (REPO / "bench").glob("*.py"))
    assert flat == ["__init__.py", "api.py", "catalog.py", "cli.py", "cli_options.py"], flat


def test_cli_is_thin():
    lines = (REPO / "bench" / "cli.py").read_text().count("\n")
    assert lines <= 280, f"cli.py has {lines} lines"


def test_starting_the_cli_loads_no_library_it_may_not_need():
    # `bench table` answers in about a second: the app and its options load no torch, Optuna,
    # pandas or SciPy; each command imports what it needs.
    import subprocess
    import sys

    code = ("import sys, dmlbench.cli; bad = [m for m in ('torch', 'faiss', 'optuna', 'pandas', 'scipy', 'sklearn', "
            "'matplotlib', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
