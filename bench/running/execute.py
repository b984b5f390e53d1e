"""A suite's runs, made: everything checked that can be before any training (:mod:`.checks`), the
data loaded once, the suite expanded into its runs (:func:`prepare`), and the runs handed to the
suite's executor (:func:`run_suite`, :mod:`dmlbench.executors`). A suite whose runs may not fit on
the results disk is warned of (:mod:`.diskspace`); a full disk stops it with one line."""

from __future__ import annotations

import copy
import dataclasses
import logging

from dmlbench.core import distributed
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import undo_if_refused
from dmlbench.running.checks import check_before_data, check_data, check_out, warn_degenerate
from dmlbench.running.diskspace import RoomCheck
from dmlbench.running.rundata import load_data, stored_test_triplets
from dmlbench.running.runner import Planned, RunJob, archive_superseded, run_job
from dmlbench.running.suite import Suite, expand
from dmlbench.tracking import logger_names, suite_context

log = logging.getLogger("dmlbench")


def prepare(suite: Suite):
    """Check the suite, load its data once, expand it; returns (data, planned runs)."""
    check_before_data(suite)
    with undo_if_refused(suite.dir):  # a suite that could not start leaves no empty folder it made behind
        check_out(suite.dir)
        return _prepare(suite)


def _prepare(suite: Suite):
    world = distributed.current()
    if suite.tuned and (world is None or world.main):  # bench run --tuned: earlier best settings' runs leave the table
        archive_superseded(suite.dir, suite.tuned)
    distributed.barrier()  # (under torchrun: the other processes see the folder as rank 0 left it)
    base = suite.base.resolved()
    data = load_data(base)
    check_data(suite, data, data.value_range())
    warn_degenerate(suite, data)
    if base.knn_k >= len(data.train):  # a k-NN vote over every training image is a chance-level constant
        raise DMLBenchError(f"knn_k={base.knn_k} must be below the {len(data.train)} training images of "
                            f"{base.dataset}; the default is 5")
    planned = expand(suite, len(data.train))
    # Stored test triplets are checked here (a corrupt file stops the suite, named); missing ones are
    # drawn by the first run that needs them: drawing needs torch, which a driver of worker
    # processes does not import.
    stored_test_triplets(data, planned[0].config, suite.dir)
    return data, planned


def run_suite(suite: Suite, on_result=None, on_start=None) -> list:
    """Run every planned run of the suite with its executor; returns the RunResults in plan order."""
    executor = suite.make_executor()
    try:
        executor.start()  # an unreachable cluster is refused before any folder is made
        data, planned = prepare(suite)
        if on_start is not None:
            on_start(suite, data, planned)
        if len(suite.devices) > 1:  # spread over the devices, round robin (the device is not in the run id)
            planned = [Planned(dataclasses.replace(p.config, device=suite.devices[i % len(suite.devices)]), p.variant)
                       for i, p in enumerate(planned)]
        root = suite.dir.resolve() if executor.remote else suite.dir  # remote workers need absolute paths
        names = logger_names(suite.base.log)
        context, kept = suite_context(names, suite.dir, suite.base.dataset) if names else ({}, [])
        if kept != names:  # a tracker that cannot be reached is left out of every run (warned once)
            planned = [Planned(dataclasses.replace(p.config, log=",".join(kept)), p.variant) for p in planned]
        jobs = [RunJob(p.config, root, p.variant, suite.reuse_stale, context) for p in planned]
        # The runs' sizes are counted from their models only where they run in this process: a
        # pool's driver imports no torch, and measures the first run instead.
        room = RoomCheck(root, [j.config for j in jobs], data, count=not executor.remote and executor.workers == 1)
        _warn(room.before())

        def each(r) -> None:
            if r.full_disk is not None:
                # Every later run would fail alike: the suite stops with the one line (a copy, so
                # that its traceback, logged by the run under -v, is not logged again).
                raise copy.copy(r.full_disk)
            _warn(room.after(r))
            if on_result is not None:
                on_result(r)

        return executor.map(run_job, jobs, on_result=each, progress="suite")
    finally:
        executor.shutdown()


def _warn(line: str | None) -> None:
    if line:
        log.warning("warning: %s", line)
