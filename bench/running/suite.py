"""A suite: which (method, seed) runs to make on one dataset, resolved from defaults, a preset or
TOML file, and command-line flags (in that order; later wins; unknown keys are errors).

:func:`prepare` checks everything that can be checked before any training (method names and
options, config values, the encoder against the image size, generative methods against the value
range) and expands the suite into its run configs; :func:`run_suite` hands them to an executor.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dmlbench.running import layout
from dmlbench.running.config import RunConfig
from dmlbench.core.errors import DMLBenchError

log = logging.getLogger("dmlbench")

SUITE_KEYS = {"methods", "seeds", "out", "set", "suite", "workers", "executor", "reuse_stale", "devices",
              "ray_address", "gpus_per_run"}
RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"method", "seed", "method_params", "data_options", "tuned"}


@dataclass
class Suite:
    base: RunConfig
    methods: list[str]
    seeds: list[int]
    method_sets: dict[str, dict] = field(default_factory=dict)
    out: Path = layout.DEFAULT_OUT
    name: str = ""
    workers: int = 1
    executor: str = "local"
    reuse_stale: bool = False
    devices: list[str] = field(default_factory=list)  # runs are spread over these (round robin)
    ray_address: str = ""
    gpus_per_run: float = 0.0

    @property
    def dir(self) -> Path:
        return layout.suite_dir(self.out, self.base.dataset, self.name)


@dataclass
class Planned:
    """One run of a suite: its config and the label of its method variant (what differs from defaults)."""

    config: RunConfig
    variant: str = ""


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dmlbench.presets").iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    return resources.files("dmlbench.presets").joinpath(f"{name}.toml").read_text()


def read_toml(path: Path | None = None, preset: str | None = None) -> dict:
    data: dict = {}
    if preset:
        if preset not in preset_names():
            raise DMLBenchError(f"unknown preset {preset!r}; presets: {', '.join(preset_names())}")
        data.update(tomllib.loads(preset_text(preset)))
    if path:
        if not Path(path).is_file():
            raise DMLBenchError(f"config file {path} does not exist; give a TOML file with the same keys as the flags")
        try:
            data.update(tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as e:
            raise DMLBenchError(f"config file {path} is not valid TOML ({e})") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def _as_list(value, key: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise DMLBenchError(f"{key} must be a comma-separated string or a list, got {value!r}")


def resolve_suite(file_values: dict, flags: dict) -> Suite:
    """Defaults <- TOML file/preset <- command-line flags (None = not given)."""
    from dmlbench.methods import BUILTIN, get_method
    from dmlbench.core.params import apply_overrides, parse_set

    unknown = set(file_values) - SUITE_KEYS - RUN_KEYS
    if unknown:
        raise DMLBenchError(f"unknown key(s) {', '.join(sorted(unknown))} in the config file; "
                            f"known: {', '.join(sorted(SUITE_KEYS | RUN_KEYS))}")
    for key in ("out", "suite", "dataset"):
        if key in file_values and not isinstance(file_values[key], str):
            raise DMLBenchError(f"{key} in the config file must be a string, got {file_values[key]!r}")
    file_sets = file_values.get("set", [])
    if not isinstance(file_sets, list) or not all(isinstance(x, str) for x in file_sets):
        raise DMLBenchError(f'set in the config file must be a list of strings, e.g. set = ["tvae.margin=2"], got {file_sets!r}')
    given = {k: v for k, v in flags.items() if v is not None}
    file_values = dict(file_values)
    # steps and epochs are one budget in two units: a flag for either replaces the file's budget
    # (bench run --preset mnist-all --steps 500), while both in one place stay an error.
    if {"steps", "epochs"} & set(given):
        for key in ("steps", "epochs"):
            file_values.pop(key, None)
    values = {**file_values, **given}
    sets = list(file_sets) + list(flags.get("set") or [])
    methods = _as_list(values.get("methods", list(BUILTIN)), "methods")
    if not methods:
        raise DMLBenchError(f"methods={values.get('methods')!r} names no method; give e.g. --methods siamese,tvae "
                            "(bench list methods), or leave it out for all")
    if "raw" not in methods:
        methods.append("raw")  # every table gets the raw-pixel floor row
    try:
        seeds = [int(s) for s in _as_list(values.get("seeds", [0]), "seeds")]
        if not seeds or min(seeds) < 0:
            raise ValueError
    except ValueError:
        raise DMLBenchError(f"seeds must be integers >= 0 separated by commas, got {values.get('seeds')!r}") from None
    by_owner = parse_set(sets)
    # A preset or file may configure methods that the command line then leaves out: those settings
    # have nothing to apply to. A name that is no method at all is still an error.
    flag_owners = set(parse_set(list(flags.get("set") or [])))
    for owner in list(by_owner):
        if owner != "data" and owner not in methods:
            try:
                get_method(owner)
            except DMLBenchError as e:
                raise DMLBenchError(f"set {owner}.KEY: {e}; or data.KEY for a dataset option "
                                    "(bench list datasets)") from None
            if owner in flag_owners:
                raise DMLBenchError(f"set names {owner!r}, which is not among the methods being run "
                                    f"({', '.join(methods)})")
            del by_owner[owner]
    data_options = by_owner.pop("data", {})
    run_values = {k: v for k, v in values.items() if k in RUN_KEYS}
    base = apply_overrides(RunConfig(), run_values, "run")
    base = dataclasses.replace(base, data_options=data_options)
    devices = _as_list(values.get("devices", []), "devices")
    if not devices and values.get("devices") not in (None, "", []):
        raise DMLBenchError(f"devices={values.get('devices')!r} names no device; give e.g. --devices cuda:0,cuda:1")
    for d in devices:
        dataclasses.replace(base, device=d).check()
    if devices:
        base = dataclasses.replace(base, device=devices[0])
    workers = auto_workers(values.get("workers", 1), devices or [base.device], base.threads)
    gpus = float(values.get("gpus_per_run", 0) or 0)
    if not 0 <= gpus <= 64:
        raise DMLBenchError(f"gpus_per_run={gpus} must be between 0 and 64 (0.25 packs four runs on a GPU)")
    executor = str(values.get("executor", "local"))
    if gpus and executor != "ray":
        raise DMLBenchError(f"gpus_per_run={gpus:g} applies to --executor ray only; on one machine give --workers "
                            "(--workers auto packs 4 runs per GPU)")
    from dmlbench.executors import EXECUTORS

    if executor not in EXECUTORS:
        raise DMLBenchError(f"executor {executor!r} is not one of: {', '.join(EXECUTORS)}")
    return Suite(base, methods, seeds, by_owner, Path(values.get("out", layout.DEFAULT_OUT)),
                 str(values.get("suite", "")), workers, executor, bool(values.get("reuse_stale", False)),
                 devices, str(values.get("ray_address", "") or ""), gpus)


GPU_RUNS_PER_DEVICE = 4  # measured on an H100: 4 MNIST runs at once finish 3.2x sooner than in a row


def auto_workers(value, devices: list[str], threads: int | None) -> int:
    """``workers``: a number, or ``auto``: 4 runs per GPU; on CPU one per 4 cores (small models
    gain nothing from splitting 2 cores, and a worker pays its own start-up)."""
    from dmlbench.core.runtime import default_threads

    if str(value) == "auto":
        gpus = [d for d in devices if d.startswith("cuda")]
        if gpus:
            return GPU_RUNS_PER_DEVICE * len(gpus)
        return max(1, (threads or default_threads()) // 4)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise DMLBenchError(f"workers={value!r} must be a number or auto") from None
    if not 1 <= n <= 1024:
        raise DMLBenchError(f"workers={n} must be between 1 and 1024")
    return n


def _fmt(value) -> str:
    """A row label's value: floats to 4 significant digits (a tuned 0.4807866320755242 reads 0.4808)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _get_key(obj, dotted: str):
    head, _, rest = dotted.partition(".")
    value = getattr(obj, head)
    return value[rest] if rest else value


def expand(suite: Suite, n_train: int) -> list[Planned]:
    """Every run of the suite, with the step budget fixed from the training-set size."""
    from dmlbench.methods import get_method
    from dmlbench.core.params import apply_overrides
    from dmlbench.running.runner import with_method
    from dmlbench.tune import tuned_config

    base = suite.base.resolved().with_budget(n_train)
    tuned = getattr(suite, "tuned", {})
    planned = []
    for name in suite.methods:
        cls = get_method(name)
        overrides = suite.method_sets.get(name, {})
        params = apply_overrides(cls.Params(), overrides, name)
        defaults = cls.Params()
        changed = [k for k in sorted(overrides) if _get_key(params, k) != _get_key(defaults, k)]
        variant = ",".join(f"{k}={_fmt(_get_key(params, k))}" for k in changed)
        if name in tuned:
            # The table marks what the tune searched (run keys such as lr first), and apart from it
            # what was held fixed (a --set or --lr given to the tune, or to this run).
            searched = set(tuned[name].get("params") or {})
            run_keys = getattr(suite, "run_sets", {}).get(name, {})
            run_t = [f"{k}={_fmt(v)}" for k, v in sorted(run_keys.items()) if k in searched]
            meth_t = [f"{k}={_fmt(_get_key(params, k))}" for k in changed if k in searched]
            fixed = [f"{k}={_fmt(v)}" for k, v in sorted(run_keys.items()) if k not in searched] + \
                    [f"{k}={_fmt(_get_key(params, k))}" for k in changed if k not in searched]
            variant = "tuned" + (":" + ",".join(run_t) if run_t else "") + (";" + ",".join(meth_t) if meth_t else "") \
                + (";fixed:" + ",".join(fixed) if fixed else "")
        for seed in suite.seeds:
            cfg = tuned_config(suite, with_method(base, name, seed, dataclasses.asdict(params)))
            planned.append(Planned(cfg, variant))
    return planned


def check_before_data(suite: Suite) -> None:
    """Checks that need no decoded image: names, options, values, and the encoder against a known
    image size."""
    from dmlbench.data.load import planned_shape
    from dmlbench.training.encoders import check_input
    from dmlbench.methods import get_method
    from dmlbench.core.params import apply_overrides
    from dmlbench.running.runner import input_shape

    base = suite.base.resolved()
    base.check()
    repeated = sorted({s for s in suite.seeds if list(suite.seeds).count(s) > 1})
    if repeated:
        raise DMLBenchError(f"seeds repeat ({', '.join(map(str, repeated))}); give each seed once")
    for seed in suite.seeds:
        dataclasses.replace(base, seed=seed).check()
    from dmlbench.methods.pml import check_runnable

    for name in suite.methods:
        check_runnable(name)
        apply_overrides(get_method(name).Params(), suite.method_sets.get(name, {}), name)
    for device in dict.fromkeys([base.device, *suite.devices]):
        if str(device).startswith("cuda"):  # before any run folder is touched (torch only for CUDA)
            from dmlbench.core.runtime import resolve_device

            resolve_device(str(device))
    trained = [m for m in suite.methods if get_method(m).trainable]
    shape = planned_shape(base.dataset, base.data_dir or None, base.data_options)
    if shape is not None and trained:
        check_input(base.encoder, input_shape(base, shape))


def check_out(folder: Path) -> None:
    """The suite folder exists (or can be made) and is writable; orphan temp files of killed runs
    are removed."""
    import os

    from dmlbench.core.io import clean_temp_files

    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise DMLBenchError(f"results folder {folder}: {parent} is a file, not a folder; choose another out folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DMLBenchError(f"cannot create results folder {folder} ({e.strerror}); choose another out folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DMLBenchError(f"results folder {folder} is not writable; choose another out folder")
    clean_temp_files(folder, older_than_s=600)  # older: no live writer is about to rename it


def prepare(suite: Suite):
    """Check the suite, load its data once, expand it; returns (data, planned runs)."""
    from dmlbench.core.io import undo_if_refused

    check_before_data(suite)
    with undo_if_refused(suite.dir):  # a suite that could not start leaves no empty folder it made behind
        check_out(suite.dir)
        return _prepare(suite)


def _prepare(suite: Suite):
    from dmlbench.training.encoders import check_input
    from dmlbench.methods import GenerativeMethod, get_method
    from dmlbench.running.runner import input_shape, load_data, stored_test_triplets

    if getattr(suite, "tuned", None):  # bench run --tuned: earlier best settings' runs leave the table
        from dmlbench.tune.tuned import archive_superseded

        archive_superseded(suite)
    base = suite.base.resolved()
    data = load_data(base)
    if any(get_method(m).trainable for m in suite.methods):
        check_input(base.encoder, input_shape(base, data.input_shape))
    check_batch_sizes(suite, base.batch_size, data.train.y)
    if base.knn_k >= len(data.train):  # a k-NN vote over every training image is a chance-level constant
        raise DMLBenchError(f"knn_k={base.knn_k} must be below the {len(data.train)} training images of "
                            f"{base.dataset}; the default is 5")
    generative = [m for m in suite.methods if issubclass(get_method(m), GenerativeMethod)]
    lo, hi = data.value_range()
    if generative and (lo < 0 or hi > 1):
        raise DMLBenchError(f"{', '.join(generative)} decode pixels in [0, 1] (a sigmoid output), but this data spans "
                            f"[{lo:.3g}, {hi:.3g}]; use normalize=unit or leave the generative methods out")
    planned = expand(suite, len(data.train))
    # Stored test triplets are checked here (a corrupt file stops the suite, named); missing ones are
    # drawn by the first run that needs them: drawing needs torch, which a driver of worker
    # processes does not import.
    stored_test_triplets(data, planned[0].config, suite.dir)
    return data, planned


def check_batch_sizes(suite: Suite, batch_size: int, train_labels, params: dict | None = None) -> None:
    """Every trained method's batch kind gets a full step from ``batch_size`` (torch-free, once,
    before any run: else every run of the method would fail alike). ``params``: per method, its
    options (default: the suite's --set over the method's defaults)."""
    from dmlbench.training.batches import check_batch_size
    from dmlbench.methods import get_method
    from dmlbench.core.params import apply_overrides

    for name in suite.methods:
        cls = get_method(name)
        if not cls.trainable:
            continue
        p = (params or {}).get(name) or apply_overrides(cls.Params(), suite.method_sets.get(name, {}), name)
        check_batch_size(name, cls, p, batch_size, train_labels)


def run_suite(suite: Suite, on_result=None, on_start=None):
    """Run every planned run of the suite with its executor; returns the RunResults in plan order."""
    from dmlbench.executors import get_executor

    executor = get_executor(suite.executor, workers=suite.workers, threads=suite.base.threads,
                            address=suite.ray_address, gpus_per_run=suite.gpus_per_run)
    executor.connect()  # an unreachable cluster is refused before any folder is made
    data, planned = prepare(suite)
    if on_start is not None:
        on_start(suite, data, planned)
    if len(suite.devices) > 1:  # spread over the devices, round robin (the device is not in the run id)
        planned = [Planned(dataclasses.replace(p.config, device=suite.devices[i % len(suite.devices)]), p.variant)
                   for i, p in enumerate(planned)]
    return executor.run(planned, suite.dir, reuse_stale=suite.reuse_stale, on_result=on_result, data=data)
