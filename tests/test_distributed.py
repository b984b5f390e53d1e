"""A run as several processes (issue #29): `--nproc-per-run N` trains as one process does.

On the CPU with gloo, 2 processes of one thread each: every built-in method's per-step losses
agree with the 1-process run to 1e-5 and its metrics to 1e-4; the gradient of a step is the
1-process gradient (a loss's own parameters included, which PML's DistributedLossWrapper would
scale by the world size); the sharded evaluation gives the 1-process embeddings and metrics bit
for bit; a rank killed mid-epoch fails its run in one line and the re-run resumes to the
uninterrupted run's metrics bit for bit; torchrun's and Ray's worlds run the same training.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import dmlbench
from dmlbench.blocks.batches import PAIRS, PLAIN, TRIPLETS, Balanced, Layout, check_shards
from dmlbench.cli import app
from dmlbench.core import distributed
from dmlbench.core.errors import DMLBenchError
from dmlbench.executors.ranks import failure_reason
from dmlbench.methods import BUILTIN, get_method
from dmlbench.report.table import world_note

BIN = Path(sys.executable).parent
FAST = dict(dataset="digits", seeds=[0], steps=20, epoch_size=128, test_triplets=300, echo=None)
TIMING = ("train_seconds", "eval_seconds")


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def runs(out: Path) -> dict[str, Path]:
    return {p.parent.parent.name: p.parent for p in (out / "digits").glob("*/s0-*/metrics.json")}


def numbers(run: Path) -> dict:
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in TIMING}


def losses(run: Path) -> np.ndarray:
    h = pd.read_csv(run / "history.csv")
    return h.drop(columns=["epoch", "step", "lr", "seconds", "images_per_s"]).to_numpy()


# ----------------------------------------------------------------------------- in one world, spawned


def _rank(target, rank: int, size: int, port: int, queue, args) -> None:
    torch.set_num_threads(1)
    world = distributed.join(rank, size, address="127.0.0.1", port=port)
    try:
        queue.put((rank, target(world, *args)))
    finally:
        distributed.leave()


def in_world(target, *args, size: int = 2):
    """``target(world, *args)`` in each of ``size`` spawned ranks of a gloo world; rank 0's return value."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = distributed.free_port("127.0.0.1")
    procs = [ctx.Process(target=_rank, args=(target, r, size, port, queue, args)) for r in range(size)]
    for p in procs:
        p.start()
    out: dict = {}
    while len(out) < size and (not queue.empty() or any(p.is_alive() for p in procs)):
        if queue.empty():
            time.sleep(0.05)
        else:
            rank, value = queue.get()
            out[rank] = value
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out[0]


CASES = [(m, {}) for m in BUILTIN] + [("pml:ArcFaceLoss", {}), ("pml:MultiSimilarityLoss",
                                                                 {"miner": "MultiSimilarityMiner"}),
                                      ("triplet-hinge", {"mining": "semihard"})]


def _step_gradients(world):
    """Per case: the largest gradient difference (relative to the largest 1-process gradient) and
    loss-term difference between one process on the whole batch and the world's averaged shards."""
    y_all = torch.arange(200) % 10
    x_all = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    from dmlbench.blocks.sampling import ClassIndex

    index = ClassIndex(y_all)
    out = {}
    for name, options in CASES:
        cls = get_method(name)
        torch.manual_seed(0)
        method = cls(cls.Params(**options), input_shape=(1, 8, 8), embedding_dim=16, encoder="mlp", num_classes=10)
        kind = method.batch_kind
        layout = kind.layout(80, 10)
        idx = kind.epoch_indices(index, 200, layout, 1, torch.Generator().manual_seed(1))[0]
        params = list(method.parameters())

        def step(shard):
            rows = idx if shard is None else idx[shard.rows]
            batch = kind.batch(x_all[rows], y_all[idx], layout)
            batch.shard = shard
            torch.manual_seed(2)  # the VAE's noise: drawn alike in both
            method.net.zero_grad(set_to_none=True)
            terms = method.loss_terms(batch)
            total = sum(method.weights[k] * v for k, v in terms.items())
            total.backward()
            grads = [p.grad.detach().clone() for p in params]
            vals = torch.stack([v.detach() for v in terms.values()])
            if shard is not None:
                distributed.average_(grads + [vals], world)
            return grads, vals

        one, one_vals = step(None)
        many, many_vals = step(distributed.RowShard(kind.shard_rows(layout, world.size), world))
        scale = max(float(g.abs().max()) for g in one)
        out[f"{name}{options or ''}"] = (max(float((a - b).abs().max()) for a, b in zip(one, many)) / scale,
                                         float((one_vals - many_vals).abs().max()))
    # PML's wrapper, for comparison: each rank's own rows first and the loss times the world size, so a
    # loss's own parameters (ArcFace's W) get world-size times their gradient once averaged.
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    torch.manual_seed(0)
    cls = get_method("pml:ArcFaceLoss")
    method = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=16, encoder="mlp", num_classes=10)
    rows = torch.arange(80).view(world.size, -1)[world.rank]
    wrapped = DistributedLossWrapper(method.loss_fn, efficient=False)
    wrapped(method.encoder(x_all[rows]), y_all[rows]).backward()
    w_many = method.loss_fn.W.grad.clone()
    distributed.average_([w_many], world)
    method.net.zero_grad(set_to_none=True)
    method.loss_fn(method.encoder(x_all[:80]), y_all[:80]).backward()
    out["pml_wrapper_W_ratio"] = float(w_many.norm() / method.loss_fn.W.grad.norm())
    return out


def _sharded_evaluation(world):
    """Rank 0's metrics and embeddings, evaluated in shards over the world and in this process alone."""
    from dmlbench.blocks.sampling import random_triplets
    from dmlbench.data import load_dataset
    from dmlbench.evaluation.config import EvalConfig
    from dmlbench.evaluation.evaluate import evaluate

    data = load_dataset("digits")
    torch.manual_seed(0)
    cls = get_method("vae")  # generative too: its reconstruction metrics run on rank 0 alone, after the shards
    method = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=8, encoder="mlp", num_classes=10)
    triplets = random_triplets(torch.from_numpy(data.test.y), 300, torch.Generator().manual_seed(0)).numpy()
    torch.manual_seed(5)
    ctx = evaluate(method, data, EvalConfig(), triplets, "cpu", world=world)
    if ctx is None:
        return None
    torch.manual_seed(5)
    alone = evaluate(method, data, EvalConfig(), triplets, "cpu")
    return (ctx.results, alone.results, np.array_equal(ctx.test_emb(), alone.test_emb()),
            np.array_equal(ctx.train_emb(), alone.train_emb()), len(data.test), len(data.train))


def _in_one_world(world):
    return _step_gradients(world), _sharded_evaluation(world)


@pytest.fixture(scope="module")
def world_results():
    return in_world(_in_one_world)


def test_a_step_of_two_processes_has_the_one_process_gradient_and_terms(world_results):
    gradients, _ = world_results
    ratio = gradients.pop("pml_wrapper_W_ratio")
    assert len(gradients) == len(CASES)
    for case, (grad, terms) in gradients.items():
        assert grad < 1e-5, (case, grad)  # float32 sums in another order, nothing more
        assert terms < 1e-5, (case, terms)
    # ... where PML's own wrapper doubles the gradient of ArcFace's W (why methods gather instead).
    assert ratio == pytest.approx(2.0, rel=1e-4)


def test_the_sharded_evaluation_gives_the_one_process_embeddings_and_metrics_bit_for_bit(world_results):
    _, (sharded, alone, test_same, train_same, n_test, n_train) = world_results
    assert n_test > 512 and n_train > 512  # several embedding blocks, shared between the two ranks
    assert test_same and train_same
    assert sharded == alone and {"map@r", "knn_acc", "svm_acc", "recon_error"} <= set(sharded)


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """Every built-in method, 20 steps of one step an epoch (history.csv holds each step), as 1
    process of 1 thread and as 2 processes of 1 thread each."""
    out = tmp_path_factory.mktemp("procs")
    one = dmlbench.run(methods=list(BUILTIN), out=out / "one", threads=1, **FAST)
    two = dmlbench.run(methods=list(BUILTIN), out=out / "two", threads=2, nproc_per_run=2, **FAST)
    assert (one["status"] == "done").all() and (two["status"] == "done").all(), two["reason"].tolist()
    return out


def test_two_processes_train_every_builtin_method_as_one_does(one_and_two):
    one, two = runs(one_and_two / "one"), runs(one_and_two / "two")
    assert set(one) == set(two) == set(BUILTIN) | {"raw"}
    for m in BUILTIN:
        assert one[m].name == two[m].name  # the same run id: the number of processes is not part of it
        a, b = losses(one[m]), losses(two[m])
        assert a.shape == b.shape == (20, a.shape[1])
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=m)  # every step's every term
        if m not in ("vae", "tvae"):  # (their reconstruction and KL terms are means of each rank's means)
            assert np.array_equal(a[0], b[0]), m  # the first step: the same weights and batch, the same bits
        ma, mb = numbers(one[m]), numbers(two[m])
        assert ma.keys() == mb.keys()
        for k in ma:
            assert mb[k] == pytest.approx(ma[k], abs=1e-4), (m, k)
        cfg = json.loads((two[m] / "config.json").read_text())
        assert cfg["distributed"] == {"world_size": 2, "backend": "gloo", "launcher": "local"}
        assert cfg["nproc_per_run"] == 2
    assert json.loads((one["siamese"] / "config.json").read_text())["distributed"]["world_size"] == 1
    # The raw floor trains nothing: one process, its result bit for bit the same.
    assert numbers(one["raw"]) == numbers(two["raw"])


def test_a_table_mixing_numbers_of_processes_says_so(one_and_two, tmp_path):
    suite = tmp_path / "digits"
    shutil.copytree(one_and_two / "one" / "digits", suite)
    for run in (one_and_two / "two" / "digits" / "siamese").glob("s0-*"):
        shutil.copytree(run, suite / "siamese" / run.name.replace("s0-", "s1-"))
        cfg = json.loads((suite / "siamese" / run.name.replace("s0-", "s1-") / "config.json").read_text())
        cfg["seed"] = 1
        (suite / "siamese" / run.name.replace("s0-", "s1-") / "config.json").write_text(json.dumps(cfg))
    r = bench("table", suite)
    assert r.exit_code == 0, r.stderr
    assert "Runs were made by different numbers of processes (digits: 1, 2 per run)" in r.stdout
    alone = bench("table", one_and_two / "one" / "digits")
    assert "different numbers of processes" not in alone.stdout


def test_world_note_is_per_dataset():
    agg = pd.DataFrame({"dataset": ["a", "a", "b"], "world_sizes": [(1,), (2,), (4,)]})
    assert world_note(agg).startswith("Runs were made by different numbers of processes (a: 1, 2 per run)")
    assert world_note(agg[agg["dataset"] == "b"]) == ""


KILLER = '''"""Rank 1 of a siamese run kills itself (SIGKILL) at its 10th step, once (the marker file)."""
import os
import signal
from pathlib import Path

from dmlbench.core import distributed
from dmlbench.methods.siamese import Siamese

MARK = Path(__file__).with_suffix(".killed")
_steps = [0]
_loss_terms = Siamese.loss_terms


def loss_terms(self, batch):
    world = distributed.current()
    if world is not None and world.rank == 1:
        _steps[0] += 1
        if _steps[0] == 10 and not MARK.exists():
            MARK.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return _loss_terms(self, batch)


Siamese.loss_terms = loss_terms
'''


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
def test_a_rank_killed_mid_epoch_fails_its_run_in_one_line_and_the_rerun_resumes_to_the_same_bits(tmp_path):
    from dmlbench.methods.siamese import Siamese

    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    # 4 steps an epoch: rank 1 dies in the third epoch, after two checkpoints.
    kw = dict(methods=["siamese"], dataset="digits", seeds=[0], steps=24, epoch_size=512, test_triplets=300,
              threads=2, nproc_per_run=2)
    said: list[str] = []
    original = Siamese.loss_terms
    try:  # the plugin patches the method in this process too (only a rank 1 ever dies of it)
        first = dmlbench.run(**kw, out=tmp_path / "killed", plugins=[str(plugin)], echo=said.append)
        assert plugin.with_suffix(".killed").exists()
        run = Path(first.loc[first["method"] == "siamese", "run_dir"].item())
        reason = json.loads((run / "failed.json").read_text())["reason"]
        assert reason == ("rank 1 of 2 was killed by SIGKILL; the run's other processes were stopped: re-run to "
                          "resume it from its last checkpoint")
        assert f"[1/2] siamese seed 0: FAILED: {reason}" in said
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
        before = pd.read_csv(run / "history.csv")
        again = dmlbench.run(**kw, out=tmp_path / "killed", plugins=[str(plugin)], echo=None)
    finally:
        Siamese.loss_terms = original
    assert again.set_index("method")["status"].to_dict() == {"siamese": "done", "raw": "skipped"}
    after = pd.read_csv(run / "history.csv")
    assert len(before) == 2 and len(after) == 6
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # resumed: the first two epochs (timings too) kept
    whole = dmlbench.run(**kw, out=tmp_path / "whole", echo=None)
    assert (whole["status"] == "done").all()
    assert numbers(run) == numbers(runs(tmp_path / "whole")["siamese"])
    cols = [c for c in after.columns if c not in ("seconds", "images_per_s")]
    pd.testing.assert_frame_equal(after[cols], pd.read_csv(runs(tmp_path / "whole")["siamese"] / "history.csv")[cols])


def test_torchrun_processes_join_one_world_and_train_as_one_process_does(one_and_two, tmp_path):
    args = ["run", "--methods", "siamese", "--steps", "20", "--epoch-size", "128", "--test-triplets", "300",
            "--seeds", "0", "--threads", "2", "--out", str(tmp_path)]
    r = subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python", str(BIN / "bench"), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # rank 0 prints the table, once (its row marked * where the tree has uncommitted changes)
    assert len(re.findall(r"^\| digits \| siamese( \*)? \|", r.stdout, re.M)) == 1, r.stdout
    got, want = runs(tmp_path)["siamese"], runs(one_and_two / "two")["siamese"]
    assert json.loads((got / "config.json").read_text())["distributed"] == \
        {"world_size": 2, "backend": "gloo", "launcher": "torchrun"}
    assert numbers(got) == numbers(want)  # the world spawned by bench run, bit for bit
    assert np.array_equal(losses(got), losses(want))


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
def test_ray_places_a_runs_ranks_and_they_train_as_one_process_does(one_and_two, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import ray

    try:
        r = bench("run", "--methods", "siamese", "--steps", "20", "--epoch-size", "128", "--test-triplets", "300",
                  "--threads", "2", "--nproc-per-run", "2", "--executor", "ray", "--out", tmp_path)
    finally:
        ray.shutdown()
    assert r.exit_code == 0, r.stderr
    got, want = runs(tmp_path)["siamese"], runs(one_and_two / "two")["siamese"]
    assert json.loads((got / "config.json").read_text())["distributed"]["launcher"] == "ray"
    assert numbers(got) == numbers(want)


# ----------------------------------------------------------------------------- what is refused


def test_shards_are_whole_tuples_and_gather_back_to_the_batch_order():
    for kind, unit, batch in ((PLAIN, 1, 120), (PAIRS, 2, 120), (TRIPLETS, 3, 120), (Balanced(m=4), 40, 80)):
        layout = kind.layout(batch, 10)
        rows = kind.shard_rows(layout, 2)
        assert sorted(rows.reshape(-1).tolist()) == list(range(layout.per_step))
        tuples = kind.tuple_rows(layout)
        assert tuples.shape[1] == unit
        for t in tuples.tolist():  # every tuple on one rank
            assert any(set(t) <= set(r) for r in rows.tolist()), (kind, t)
        shard = distributed.RowShard(rows, distributed.World(0, 2, "gloo"))
        flat = rows.reshape(-1)
        order = shard.order if shard.order is not None else torch.arange(len(flat))
        assert torch.equal(flat[order], torch.arange(layout.per_step))  # gathered rows back in batch order


def test_a_batch_the_processes_cannot_share_is_refused_naming_batch_sizes_that_they_can():
    y = np.arange(1000) % 10
    with pytest.raises(DMLBenchError) as e:
        check_shards("triplet-hinge", get_method("triplet-hinge"), get_method("triplet-hinge").Params(), 130, y, 4)
    assert str(e.value) == ("triplet-hinge: --nproc-per-run 4 with batch_size=130: a step holds 43 triplets, which 4 "
                            "processes cannot share equally (each takes whole triplets); use --batch-size 122 or 132, "
                            "or fewer processes")
    pml = get_method("pml:ContrastiveLoss")
    with pytest.raises(DMLBenchError, match="a step holds 3 class-balanced groups, which 2 processes cannot share"):
        check_shards("pml:ContrastiveLoss", pml, pml.Params(), 128, y, 2)
    check_shards("siamese", get_method("siamese"), get_method("siamese").Params(), 128, y, 2)  # 64 pairs: fine
    assert Balanced(m=4).shard_problem(Layout(40, 40), 2) == \
        "a step holds 1 class-balanced group, fewer than the 2 processes (each takes whole class-balanced groups)"


PLAIN_METHOD = '''
from dmlbench.methods import Method, register_method


@register_method("serial-only")
class SerialOnly(Method):
    """A loss written before data-parallel runs: it never gathers the batch."""

    terms = ("loss",)

    def loss_terms(self, batch):
        return {"loss": self.encoder(batch.x).pow(2).mean()}
'''


def test_what_cannot_run_as_several_processes_is_one_line(tmp_path):
    plugin = tmp_path / "serial_only.py"
    plugin.write_text(PLAIN_METHOD)
    cases = [
        (["--nproc-per-run", "0"], "nproc_per_run=0 must be a whole number of processes per run, 1 (one process) to "
                                   "1024"),
        (["--plugin", plugin, "--methods", "serial-only", "--nproc-per-run", "2"],
         "--nproc-per-run 2: serial-only cannot train as several processes"),
        (["--methods", "triplet-hinge", "--batch-size", "130", "--nproc-per-run", "4"],
         "a step holds 43 triplets, which 4 processes cannot share equally"),
        (["--methods", "siamese", "--nproc-per-run", "2", "--devices", "cuda:0,cuda:1"],
         "each run's processes take the GPUs themselves"),
    ]
    for flags, message in cases:
        r = bench("run", *flags, "--steps", "2", "--out", tmp_path / "out")
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = bench("tune", "--methods", "siamese", "--nproc-per-run", "2", "--trials", "1", "--out", tmp_path / "tune")
    assert r.exit_code == 2 and "bench tune makes each trial as one process" in r.stderr, r.stderr


def test_batchnorm_in_training_and_a_method_that_does_not_gather_are_refused_by_the_trainer(digits):
    from dmlbench.training.config import TrainConfig
    from dmlbench.training.trainer import Trainer

    world = distributed.World(0, 2, "gloo")  # no process group is needed to refuse
    cls = get_method("siamese")
    method = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=8, encoder="mlp", num_classes=10)
    method.norm = torch.nn.BatchNorm1d(8)
    trainer = Trainer(method, digits, TrainConfig(steps=1), world=world)
    with pytest.raises(DMLBenchError, match=r"BatchNorm layers \(norm, ...\) would normalise each process's share.*"
                       r"use an encoder whose normalisation does not depend on the batch \(GroupNorm, LayerNorm\), "
                       r"or --nproc-per-run 1$"):
        trainer._shard(PAIRS, PAIRS.layout(128, 10))
    # a timm trunk's BatchNorm is what --freeze-bn holds (the name alone decides the advice)
    method.encoder_choice = dataclasses.replace(method.encoder_choice, name="timm:resnet18")
    with pytest.raises(DMLBenchError, match=r"unlike one process; give --freeze-bn, or --nproc-per-run 1$"):
        trainer._shard(PAIRS, PAIRS.layout(128, 10))
    serial = type("Serial", (cls,), {"data_parallel": False, "name": "serial"})
    method = serial(cls.Params(), input_shape=(1, 8, 8), embedding_dim=8, encoder="mlp", num_classes=10)
    with pytest.raises(DMLBenchError, match="does not declare data_parallel = True"):
        Trainer(method, digits, TrainConfig(steps=1), world=world)._shard(PAIRS, PAIRS.layout(128, 10))


def test_the_reason_of_a_failed_world_names_the_rank_that_caused_it():
    lost = ("rank 0 of 2 lost contact with another rank of this run (Connection closed by peer)", True)
    assert failure_reason(2, [1, -9], {0: lost}, {}).startswith("rank 1 of 2 was killed by SIGKILL; ")
    own = ("DMLBenchError: no space", False)
    assert failure_reason(3, [1, 1, 0], {0: lost, 1: own}, {}).startswith("rank 1 of 3 failed: DMLBenchError: no space")
    assert failure_reason(2, [1, 0], {0: lost}, {}).startswith("rank 0 of 2 failed: rank 0 of 2 lost contact")


def _silent_peer(world):
    """Rank 1 stays silent past the collectives' timeout; rank 0's all-reduce must fail, not wait."""
    if world.rank == 1:
        time.sleep(8)
    t0 = time.monotonic()
    try:
        distributed.average_([torch.zeros(3)], world)
    except Exception as e:  # noqa: BLE001 - what the test looks at
        return time.monotonic() - t0, str(distributed.lost_error(e))
    return time.monotonic() - t0, None


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
def test_a_rank_that_hangs_alive_fails_the_others_after_the_timeout_in_one_line(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2")
    waited, message = in_world(_silent_peer)
    assert 1.5 < waited < 7
    assert message == ("rank 0 of 2 lost contact with another rank of this run (Timed out waiting 2000ms for recv "
                       "operation to complete); a killed or crashed rank ends the run: re-run the same command to "
                       "resume from its last checkpoint")


def test_a_lost_peer_is_recognised_and_other_errors_are_not():
    assert distributed.lost_error(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                                               "[127.0.0.1]:3997")) is not None
    assert distributed.lost_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def _first_batch_failure(world, message):
    """What rank 0's training raises where the first batch's loss raises ``message`` on every rank."""
    from dmlbench.data import load_dataset
    from dmlbench.training.config import TrainConfig
    from dmlbench.training.trainer import Trainer

    cls = get_method("siamese")

    def broken(self, batch):
        raise RuntimeError(message)

    failing = type("Failing", (cls,), {"loss_terms": broken})
    method = failing(cls.Params(), input_shape=(1, 8, 8), embedding_dim=8, encoder="mlp", num_classes=10)
    try:
        Trainer(method, load_dataset("digits"), TrainConfig(steps=2), world=world).fit()
    except Exception as e:  # noqa: BLE001 - what the test looks at
        return type(e).__name__, str(e), distributed.lost_error(e) is not None
    return None


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
def test_a_peer_lost_in_the_first_batch_is_the_runs_failure_and_the_encoders_own_failure_is_named():
    # gloo's words for a closed peer: the run's failure (recorded and resumable), not a broken encoder
    lost = in_world(_first_batch_failure, "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1")
    assert lost == ("RuntimeError", "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1", True)
    kind, message, is_lost = in_world(_first_batch_failure, "mat1 and mat2 shapes cannot be multiplied")
    assert kind == "DMLBenchError" and not is_lost
    assert message.startswith("siamese with encoder 'mlp' fails on its first training batch") and "mat1 and mat2 shapes" in message
