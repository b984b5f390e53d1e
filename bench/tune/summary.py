"""A tune's results: tuned.json (per method its best settings, counts and time), the summary
table, and what is said when the budget was not equal or a method has nothing to test."""

from __future__ import annotations

import logging
import platform
from collections import Counter
from pathlib import Path

from dmlbench.core.io import CorruptFileError, read_json
from dmlbench.core.space import Range
from dmlbench.running.provenance import device_kind
from dmlbench.tune.options import TRIALS_DIR, Job, fmt_params, objective_direction
from dmlbench.tune.spaces import split_params
from dmlbench.tune.storage import budget, import_optuna, open_storage, redact

log = logging.getLogger("dmlbench")


def summarize(job: Job, wall_seconds: float, workers: int) -> dict:
    """tuned.json: per method its best settings (method keys and run keys apart), value, trial,
    counts by state and seconds."""
    from optuna.trial import TrialState

    optuna = import_optuna()
    storage = open_storage(job.storage_url)
    methods, spans = {}, []
    for plan in job.plans:
        study = optuna.load_study(study_name=plan.name, storage=storage)
        finished, running, waiting = budget(study)
        trials = study.get_trials(deepcopy=False)
        states = {s.name: sum(t.state == s for t in finished) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                          TrialState.FAIL)}
        states.update(RUNNING=len(running), WAITING=len(waiting), RETRIED=len(trials) - len(finished) - len(running)
                      - len(waiting))
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        entry = {"study": plan.name, "storage": redact(job.storage_url), "trials": len(finished), "states": states,
                 "space": {k: str(d) for k, d in plan.space.items()}, "best_trial": None, "best_value": None,
                 "params": {}, "method_params": dict(plan.fixed), "run_params": dict(plan.fixed_run)}
        if complete:
            best = study.best_trial
            method_keys, run_keys = split_params(best.params, plan.name)
            entry.update(best_trial=best.number, best_value=best.value, params=dict(best.params),
                         method_params={**plan.fixed, **method_keys}, run_params={**plan.fixed_run, **run_keys},
                         fold_values={k: v for k, v in best.user_attrs.items() if k.startswith("fold")},
                         at_edge=sorted(k for k, d in plan.space.items()
                                        if isinstance(d, Range) and k in best.params and d.at_edge(best.params[k])))
        reasons = [t.user_attrs.get("fail_reason") for t in finished if t.state == TrialState.FAIL]
        entry["fail_reasons"] = list(dict.fromkeys(r for r in reasons if r))[:3]  # the distinct first few
        entry["trial_seconds"] = round(sum((t.datetime_complete - t.datetime_start).total_seconds()
                                           for t in finished if t.datetime_start and t.datetime_complete), 3)
        own = [(t.datetime_start, t.datetime_complete) for t in finished if t.datetime_start and t.datetime_complete]
        spans += own
        entry["wall_seconds"] = round(_busy_seconds(own), 3)
        entry["devices"] = trial_devices(finished, Path(job.suite_dir))
        methods[plan.name] = entry
    base = job.suite.base.resolved()
    return {
        "dataset": base.dataset, "suite_dir": str(job.suite_dir), "storage": redact(job.storage_url),
        "objective": job.opts.objective, "direction": objective_direction(job.opts.objective),
        "validation": job.kind, "folds": job.opts.folds, "trials": job.opts.trials, "tune_seed": job.opts.tune_seed,
        "prune": job.opts.prune, "config": {k: v for k, v in base.to_dict().items()
                                            if k not in ("method", "seed", "method_params", "tuned")},
        "methods": methods,
        # A resumed tune's wall time is the union of all its trials' spans (every session, the gaps
        # between them left out); this command's own time, and where it ran, apart.
        "tune_seconds": round(_busy_seconds(spans), 3), "wall_seconds": round(wall_seconds, 3),
        "where": {"host": platform.node(), "executor": job.suite.executor, "workers": workers, "device": base.device},
    }


def trial_devices(trials, suite_dir: Path) -> dict[str, int]:
    """{device: finished trials} from each trial's run folder (its config.json's provenance): a
    study resumed elsewhere (a GPU, then a CPU) says where its trials ran. A run folder is looked
    for where the trial recorded it, else under this suite's trials/ (a study copied from another
    machine); "unknown" where neither holds it (a crash before the run began)."""
    counts: Counter = Counter()
    for t in trials:
        dirs = [v for k, v in sorted(t.user_attrs.items()) if k.startswith("run_dir_fold")]
        kind = "unknown"
        if dirs:
            p = Path(dirs[0])
            for cand in (p, suite_dir / TRIALS_DIR / p.parent.parent.name / p.parent.name / p.name):
                try:
                    kind = device_kind((read_json(cand / "config.json").get("provenance") or {}).get("device") or {})
                    break
                except (CorruptFileError, AttributeError):  # (read_json reports a missing file so too)
                    continue
        counts[kind] += 1
    return dict(sorted(counts.items()))


def _busy_seconds(spans: list) -> float:
    """Wall time during which at least one of the spans ran: the union of the intervals, so the
    hours between two sessions of a resumed tune do not count."""
    total, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total += (b - a).total_seconds()
            end = b
        elif b > end:
            total += (b - end).total_seconds()
            end = b
    return total


def summary_table(doc: dict) -> str:
    """The tune's summary: per method its best value and settings, trial counts and minutes."""
    obj = doc["objective"]
    head = ["method", f"best {obj}", "trial", "complete", "pruned", "failed", "minutes", "best settings"]
    rows = []
    for name, m in doc["methods"].items():
        s = m["states"]
        value = "-" if m["best_value"] is None else f"{m['best_value']:.4f}"
        trial = "-" if m["best_trial"] is None else str(m["best_trial"])
        settings = ("(no complete trial)" if m["best_trial"] is None
                    else fmt_params({**m["method_params"], **m["run_params"]}) or "(defaults)")
        rows.append([name, value, trial, str(s["COMPLETE"]), str(s["PRUNED"]), str(s["FAIL"]),
                     f"{m['wall_seconds'] / 60:.1f}", settings])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    devices: Counter = Counter()
    for m in doc["methods"].values():
        devices.update(m.get("devices") or {})
    footer = []
    if devices:  # (a tuned.json of an older dmlbench has no devices)
        footer.append("trials ran on " + ", ".join(f"{d} ({n})" for d, n in sorted(devices.items())))
    if doc.get("tune_seconds") is not None:
        footer.append(f"tuning time {doc['tune_seconds'] / 60:.1f} min over all sessions")
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]]
                     + ([f"({'; '.join(footer)})"] if footer else []))


def other_methods(path: Path, doc: dict) -> dict:
    """The entries of an earlier tuned.json for methods this tune left out (``--methods`` a subset
    of an earlier tune of the same suite), so that tuned.json keeps every method tuned there."""
    if not path.is_file():
        return {}
    try:
        old = read_json(path)
    except CorruptFileError as e:
        log.warning("%s; it is rewritten with the methods of this tune only", e)
        return {}
    if (old.get("dataset"), old.get("objective")) != (doc["dataset"], doc["objective"]):
        return {}
    return {k: v for k, v in (old.get("methods") or {}).items() if k not in doc["methods"]}


def failed_methods(doc: dict) -> dict[str, str]:
    """{method: why} for the methods of tuned.json without a complete trial (nothing to test)."""
    out = {}
    for name, m in doc["methods"].items():
        # No trial yet (a --timeout before its first) is a budget to finish, not a failure.
        if m.get("best_trial") is None and m.get("trials"):
            reasons = m.get("fail_reasons") or []
            out[name] = (f"none of its {m['trials']} trials completed"
                         + (f" (first failure: {reasons[0]})" if reasons else ""))
    return out


def budget_warnings(doc: dict, asked: int | None = None) -> list[str]:
    """Lines saying when the methods of a tuned.json did not get an equal or full budget."""
    counts = {name: int(m.get("trials") or 0) for name, m in doc["methods"].items()}
    if not counts:
        return []
    lo, hi = min(counts.values()), max(counts.values())
    asked = asked if asked is not None else doc.get("trials")
    each = ", ".join(f"{n} {c}" for n, c in counts.items())
    if asked and hi < asked:
        return [f"the tune stopped at {lo if lo == hi else f'{lo} to {hi}'} of {asked} trials per method (the --timeout "
                "or an interrupt); the settings are the best so far: re-run the same command to finish the budget "
                "(the studies resume)" + ("" if lo == hi else f", or give --trials {hi} to even the counts now ({each})")]
    if lo != hi:
        return [f"the methods had unequal tuning budgets ({each} trials), so their comparison is not equal-budget; "
                f"give --trials {hi} with --methods naming all of them to even them (the studies resume)"]
    return []


def edge_warnings(doc: dict) -> list[str]:
    """Lines naming each method's best settings that lie at the edge of their search range (the
    outer 5%, log-scaled for a log range): the optimum may lie beyond, so the range should widen."""
    out = []
    for name, m in doc["methods"].items():
        keys = m.get("at_edge") or []
        if keys:
            where = ", ".join(f"{k}={m['params'][k]:.4g} in {m['space'].get(k, '?')}" for k in keys)
            out.append(f"{name}'s best {where} lies at the edge of its search range: the best setting may lie "
                       "beyond it; widen the range (--space FILE.toml) and tune again")
    return out
