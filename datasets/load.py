"""Loading a dataset for a run: the one place that turns a config into a :class:`Data`.

Options from ``--set data.KEY=VALUE`` are type-checked against the loader's signature; the
split and the normalisation each return a new Data.
"""

from __future__ import annotations

import dataclasses
import os

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.params import apply_overrides
from dmlbench.data.base import (
    DATASETS,
    Data,
    DatasetRef,
    DatasetSpec,
    check_split_sizes,
    resolve_data_dir,
    standardized,
)
from dmlbench.data.splits import class_disjoint

SPLITS = ("standard", "classes")
NORMALIZE = ("unit", "standard")


def typed_options(spec: DatasetSpec, options: dict) -> dict:
    """``options`` coerced to the loader's keyword types; an unknown key or bad value is an error."""
    if not options:
        return {}
    fields = [(n, t, dataclasses.field(default=d)) for n, t, d in spec.option_fields()]
    typed = apply_overrides(dataclasses.make_dataclass("DataOptions", fields)(), options, "data")
    return {k: getattr(typed, k) for k in options}


def planned_shape(dataset: str, data_dir: str | os.PathLike | None, options: dict) -> tuple[int, int, int] | None:
    """The image shape a dataset will have, where it is known without decoding anything."""
    ref = DatasetRef.parse(dataset)
    spec = DATASETS.get(ref.name)
    if spec.shape is None:
        return None
    return spec.shape(resolve_data_dir(data_dir), ref.path, typed_options(spec, options))


def load_dataset(dataset: str, *, data_dir: str | os.PathLike | None = None, split: str = "standard",
                 seed: int = 0, options: dict | None = None, normalize: str = "unit", with_test: bool = True) -> Data:
    """Load a registered dataset (``name`` or ``name:PATH``), then apply the split and normalisation.

    ``with_test=False`` never reads the test part (the tuner's guarantee); it cannot be combined with
    ``split="classes"`` on a dataset whose test part holds half of the classes.
    """
    ref = DatasetRef.parse(dataset)
    spec = DATASETS.get(ref.name)
    if split not in SPLITS:
        raise DMLBenchError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
    if normalize not in NORMALIZE:
        raise DMLBenchError(f"normalize={normalize!r} is not one of: {', '.join(NORMALIZE)}")
    kwargs = typed_options(spec, dict(options or {}))
    if ref.path:
        if "path" not in _params(spec):
            raise DMLBenchError(f"dataset {ref.name} takes no path (got {dataset!r}); use dataset {ref.name} "
                                "and data_dir for where its files are")
        kwargs["path"] = ref.path
    elif "path" in _params(spec):
        raise DMLBenchError(f"{ref.name}: no path given; name it as {ref.name}:PATH")
    pooled = split == "classes"  # the class-disjoint split pools train and test files first
    data = spec.loader(data_dir=resolve_data_dir(data_dir), seed=seed, with_test=with_test or pooled, **kwargs)
    if pooled:
        data = class_disjoint(data)
        if not with_test:
            data = data.without_test()
    if normalize == "standard":
        data = standardized(data)
    return check_split_sizes(data)


def _params(spec: DatasetSpec) -> set[str]:
    import inspect

    return set(inspect.signature(spec.loader).parameters)
