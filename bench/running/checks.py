"""The checks before anything runs, shared by ``bench run`` and ``bench tune``: everything that can
be refused is refused here, with a one-line error and the fix, before a run or trial starts and,
where no data is needed, before any image is decoded.

- :func:`check_before_data`: names, options, values, seeds, devices, the encoder against a known
  image size;
- :func:`check_out`: the results folder can be made and written;
- :func:`check_data`: against the loaded training data: the encoder's input (a plugin encoder is
  built and tried on an example batch, once, in this process), every method's batch size (and its
  sharing between a run's processes), generative methods against the value range;
- :func:`warn_degenerate`: what runs but measures little (a tiny test set, a batch larger than
  the training set, less than one epoch of steps), said in one line each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from dmlbench.blocks.batches import check_batch_size, check_shards
from dmlbench.blocks.encoders import build_registered, check_decoder, check_input, is_builtin
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import clean_temp_files
from dmlbench.core.params import apply_overrides
from dmlbench.core.runtime import resolve_device
from dmlbench.data.load import planned_shape
from dmlbench.executors import EXECUTORS
from dmlbench.methods import GenerativeMethod, get_method
from dmlbench.methods.pml import check_runnable
from dmlbench.running.rundata import input_shape
from dmlbench.running.suite import Suite
from dmlbench.tracking import logger_names

log = logging.getLogger("dmlbench")


def check_before_data(suite: Suite) -> None:
    """Checks that need no decoded image: names, options, values, and the encoder against a known
    image size."""
    base = suite.base.resolved()
    base.check()
    logger_names(base.log)  # an unknown logger, or one whose library is missing, with its install hint
    repeated = sorted({s for s in suite.seeds if list(suite.seeds).count(s) > 1})
    if repeated:
        raise DMLBenchError(f"seeds repeat ({', '.join(map(str, repeated))}); give each seed once")
    for seed in suite.seeds:
        dataclasses.replace(base, seed=seed).check()
    for name in suite.methods:
        check_runnable(name)
        apply_overrides(get_method(name).Params(), suite.method_sets.get(name, {}), name)
    check_processes(suite, [m for m in suite.methods if get_method(m).trainable])
    for device in dict.fromkeys([base.device, *suite.devices]):
        if str(device).startswith("cuda"):  # before any run folder is touched (torch only for CUDA)
            resolve_device(str(device))
    trained = [m for m in suite.methods if get_method(m).trainable]
    if any(issubclass(get_method(m), GenerativeMethod) for m in trained):
        check_decoder(base.encoder)
    shape = planned_shape(base.dataset, base.data_dir or None, base.data_options)
    if shape is not None and trained:
        check_input(base.encoder, input_shape(base, shape))


def check_processes(suite: Suite, trained: list[str]) -> None:
    """``--nproc-per-run N`` (N > 1) where it can apply: methods that train as several processes, an
    executor that starts them, runs not spread over ``--devices`` (rank r takes cuda:r itself)."""
    n = suite.base.nproc_per_run
    if n <= 1:
        return
    serial = [m for m in trained if not get_method(m).data_parallel]
    if serial:
        raise DMLBenchError(f"--nproc-per-run {n}: {', '.join(serial)} cannot train as several processes (its "
                            "loss_terms does not gather the batch; see docs/distributed.md); run it with "
                            "--nproc-per-run 1")
    if not getattr(EXECUTORS.get(suite.executor), "ranks", False):
        raise DMLBenchError(f"--nproc-per-run {n}: executor {suite.executor} runs each run as one process; use "
                            "--executor local or ray")
    if len(suite.devices) > 1:
        raise DMLBenchError(f"--nproc-per-run {n} with --devices {','.join(suite.devices)}: each run's processes "
                            "take the GPUs themselves (rank r: cuda:r); give --device cuda instead")


def try_encoder(name: str, shape: tuple[int, int, int], out_dim: int) -> None:
    """Build a plugin encoder once and try it on an example batch, so that a broken one stops the
    command before any run or trial (each would fail alike). This imports torch, which a plugin
    that builds networks has imported already; the global random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        build_registered(name, shape, out_dim)


def check_out(folder: Path) -> None:
    """The suite folder exists (or can be made) and is writable; orphan temp files of killed runs
    are removed."""
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


def check_batch_sizes(suite: Suite, batch_size: int, train_labels, params: dict | None = None, nproc: int = 1) -> None:
    """Every trained method's batch kind gets a full step from ``batch_size``, which ``nproc``
    processes per run can share in whole tuples (torch-free, once, before any run: else every run
    of the method would fail alike). ``params``: per method, its options (default: the suite's
    --set over the method's defaults)."""
    for name in suite.methods:
        cls = get_method(name)
        if not cls.trainable:
            continue
        p = (params or {}).get(name) or apply_overrides(cls.Params(), suite.method_sets.get(name, {}), name)
        check_batch_size(name, cls, p, batch_size, train_labels)
        check_shards(name, cls, p, batch_size, train_labels, nproc)


def check_data(suite: Suite, data, value_range: tuple[float, float], params: dict | None = None) -> None:
    """Checks against the loaded training data, for ``bench run`` and ``bench tune`` alike: the
    encoder takes the images, every method's batch size gives it a full step, and generative
    methods (which decode pixels in [0, 1]) see data in [0, 1] (``value_range``: of the data as the
    runs will see it, normalised)."""
    base = suite.base.resolved()
    if any(get_method(m).trainable for m in suite.methods):
        check_input(base.encoder, input_shape(base, data.input_shape))
        if not is_builtin(base.encoder):
            try_encoder(base.encoder, input_shape(base, data.input_shape), base.embedding_dim)
    check_batch_sizes(suite, base.batch_size, data.train.y, params, base.nproc_per_run)
    generative = [m for m in suite.methods if issubclass(get_method(m), GenerativeMethod)]
    lo, hi = value_range
    if generative and (lo < 0 or hi > 1):
        raise DMLBenchError(f"{', '.join(generative)} decode pixels in [0, 1] (a sigmoid output), but this data spans "
                            f"[{lo:.3g}, {hi:.3g}]; use normalize=unit or leave the generative methods out")


SMALL_TEST = 50  # test images below which one image moves a metric by 2 points or more


def warn_degenerate(suite: Suite, data) -> list[str]:
    """Warn (and return the lines) where the suite runs but measures little: a test set of under
    50 images, a batch larger than the training set, a budget of less than one epoch."""
    base = suite.base.resolved()
    lines = []
    test = getattr(data, "test", None)
    if test is not None and len(test) < SMALL_TEST:
        lines.append(f"the test part of {base.dataset} has {len(test)} images: one image moves a metric by "
                     f"{100 / max(len(test), 1):.1f} points, and differences between methods will be noise")
    if any(get_method(m).trainable for m in suite.methods):
        n = len(data.train)
        if base.batch_size > n:
            lines.append(f"batch_size={base.batch_size} is larger than the {n} training images: every step repeats "
                         f"images; use a batch of at most {n}")
        budgeted = base.with_budget(n)
        per_epoch = max(1, n // base.batch_size)  # a pass over the training set
        if 0 < budgeted.steps < per_epoch:
            lines.append(f"{budgeted.steps} step{'s' if budgeted.steps != 1 else ''} is less than one pass over the "
                         f"training set ({per_epoch} steps of {base.batch_size} images): some training images are "
                         "never seen")
    for line in lines:
        log.warning("warning: %s", line)
    return lines
