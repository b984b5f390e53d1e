"""``bench list``: what is registered, as text: methods (paper, loss, defaults, search space, and
the ``pml:`` losses), datasets, metrics, encoders, executors and the shipped presets."""

from __future__ import annotations

import json

from dmlbench.blocks.encoders import ENCODERS, TIMM_DESCRIPTION
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.registry import load_plugin
from dmlbench.core.space import LR, describe
from dmlbench.data import DATASETS, resolve_data_dir
from dmlbench.evaluation.metrics import METRICS
from dmlbench.executors import EXECUTORS
from dmlbench.methods import get_method, method_names
from dmlbench.methods.pml import FAILS, MAIN_PARAMS
from dmlbench.running.presets import preset_names, preset_text

KINDS = ("methods", "datasets", "metrics", "encoders", "executors", "presets", "all")


def methods() -> list[str]:
    """Each method's paper, loss, defaults and search space, then the pml: losses."""
    lines = ["Methods (also pml:<LossName> for any pytorch-metric-learning loss):"]
    for name in method_names():
        d = get_method(name).describe()
        lines.append(f"  {name}\n    paper:    {d['paper']}\n    loss:     {d['formula']}\n"
                     f"    defaults: {json.dumps(d['defaults'])}"
                     + (f"\n    space:    {describe(d['space'])}" if d["space"] else ""))
    lines += ["  pml:<LossName>: any of these pytorch-metric-learning losses; space: lr, plus its main parameters",
              f"    lr ~ {LR['lr']}"]
    width = max(map(len, MAIN_PARAMS))
    for loss, space in sorted(MAIN_PARAMS.items()):
        what = (f"refused: fails in pytorch-metric-learning 2.9 ({FAILS[loss].split(' (')[0]})" if loss in FAILS
                else describe(space) if space else "(lr only)")
        lines.append(f"    pml:{loss:{width}s} {what}")
    return lines


def datasets() -> list[str]:
    """Each dataset: what it is, its size and classes, where its files go."""
    lines = [f"Datasets (data folder: {resolve_data_dir()}):"]
    for name in DATASETS.names():
        s = DATASETS.get(name)
        lines.append(f"  {name:14s} {s.description}\n    size {s.size}; classes {s.classes}; input {s.input_shape}; "
                     f"read from {s.where}")
    return lines


def metrics() -> list[str]:
    """Each metric, and which way is better."""
    return ["Metrics:"] + [f"  {m.name:20s} {'(lower is better) ' if not m.higher_is_better else ''}{m.description}"
                           for m in (METRICS.get(n) for n in METRICS.names())]


def encoders() -> list[str]:
    """Each encoder (built-in, plugin, and the timm: family)."""
    lines = ["Encoders (--encoder NAME; your own: @register_encoder, docs/add-encoder.md):"]
    lines += [f"  {name:10s} {ENCODERS.get(name).description}" for name in ENCODERS.names()]
    return lines + [f"  {TIMM_DESCRIPTION}"]


def executors() -> list[str]:
    """Each executor and its options."""
    lines = ["Executors (--executor NAME):"]
    for name in EXECUTORS.names():
        cls = EXECUTORS.get(name)
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines.append(f"  {name:10s} {' '.join(doc.split())}")
    return lines


def presets() -> list[str]:
    """Each shipped preset and the first line of its comment."""
    lines = ["Presets (bench run --preset NAME):"]
    for name in preset_names():
        first = next((ln.lstrip("# ").strip() for ln in preset_text(name).splitlines() if ln.startswith("#")), "")
        lines.append(f"  {name:16s} {first}")
    return lines


SECTIONS = {"methods": methods, "datasets": datasets, "metrics": metrics, "encoders": encoders,
            "executors": executors, "presets": presets}


def catalog(what: str = "all", plugins: list[str] | tuple[str, ...] = ()) -> str:
    """The text of ``bench list WHAT``, after importing the ``plugins`` (their entries are listed too)."""
    if what not in KINDS:
        raise DMLBenchError(f"cannot list {what!r}; use one of: {', '.join(KINDS)}")
    for spec in plugins or ():
        load_plugin(spec)
    kinds = list(SECTIONS) if what == "all" else [what]
    return "\n".join(line for kind in kinds for line in SECTIONS[kind]())
