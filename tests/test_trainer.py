"""The trainer: the step budget, the schedule, param groups, logging, weights, non-finite losses,
checkpoints, resume and seeds. Batch sampling itself is tested in test_sampling.py."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from dmlbench.blocks.batches import Batch
from dmlbench.core.errors import DMLBenchError, NonFiniteLossError
from dmlbench.core.io import torch_load
from dmlbench.core.runtime import epoch_generator, resolve_device, seed_everything
from dmlbench.methods import METHODS, Method, Params, get_method, register_method
from dmlbench.running.config import RunConfig, untrained
from dmlbench.running.runner import build_method
from dmlbench.training.config import epoch_plan
from dmlbench.training.trainer import Trainer, lr_factor, make_optimizer

N_TRAIN = 1257  # digits: 1797 images, stratified 70/30 split


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, which on a busy
    machine (other processes on the cores) makes a step 10-20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_cfg(method: str, **kw) -> RunConfig:
    """A resolved config with its step budget fixed, as the suite hands it to the runner."""
    base = dict(dataset="digits", method=method, seed=0, epochs=2, epoch_size=256, batch_size=64, encoder="mlp",
                embedding_dim=8)
    base.update(kw)
    if "steps" in kw:
        base.pop("epochs")
    return RunConfig(**base).resolved().with_budget(N_TRAIN)


def with_weights(method: str, **weights) -> dict:
    p = get_method(method).Params()
    p.weights = {**p.weights, **weights}
    return dataclasses.asdict(p)


def fit(cfg: RunConfig, data, run_dir=None, callbacks=()) -> tuple[Method, Trainer, list[dict]]:
    method = build_method(cfg, data)
    trainer = Trainer(method, data, cfg.train_config(), run_dir=run_dir, callbacks=callbacks)
    return method, trainer, trainer.fit()


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the step budget


def test_budget_is_steps_from_epochs_of_the_training_set():
    cfg = RunConfig(dataset="digits", method="siamese", epochs=3, batch_size=64).resolved().with_budget(N_TRAIN)
    assert cfg.epoch_size == N_TRAIN and cfg.steps_per_epoch() == N_TRAIN // 64 == 19
    assert cfg.steps == 3 * 19 and cfg.epochs is None
    # 3 epochs and the same number of steps are one run.
    by_steps = RunConfig(dataset="digits", method="siamese", steps=57, batch_size=64).resolved().with_budget(N_TRAIN)
    assert by_steps.run_id() == cfg.run_id()
    assert epoch_plan(57, 19) == [19, 19, 19]
    assert epoch_plan(45, 19) == [19, 19, 7]
    assert epoch_plan(5, 19) == [5]


@pytest.mark.parametrize("name", ["siamese", "triplet-hinge", "npair", "vae", "pml:MultiSimilarityLoss"])
def test_every_batch_kind_gets_the_same_steps(digits, name):
    # Pairs round 64 to 64, triplets to 63, N-pair tuples to 60, PML's class-balanced groups to 40:
    # the images per step differ, the optimiser steps do not.
    cfg = small_cfg(name, epochs=2, epoch_size=None)
    assert cfg.steps == 38
    method, trainer, history = fit(cfg, digits)
    assert trainer.steps_done == 38
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 19), (2, 38)]


def test_a_budget_that_is_not_whole_epochs_ends_with_a_short_epoch(digits):
    cfg = small_cfg("triplet-softmax", steps=10)  # epochs of 256 // 64 = 4 steps
    _, trainer, history = fit(cfg, digits)
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 4), (2, 8), (3, 10)]
    assert trainer.steps_done == 10


def test_batch_too_small_for_the_kind_is_a_one_line_error(digits):
    cfg = small_cfg("triplet-hinge", batch_size=2)
    with pytest.raises(DMLBenchError, match="batch_size=2 is too small for triplets") as e:
        fit(cfg, digits)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the learning rate


def test_cosine_schedule_anneals_per_step_to_zero(digits, tmp_path):
    lr, steps = 1e-3, 8
    cfg = small_cfg("siamese", steps=steps, epoch_size=64, lr=lr, lr_schedule="cosine")  # one step per epoch
    _, _, history = fit(cfg, digits, run_dir=tmp_path)
    expected = [lr * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]
    assert [r["lr"] for r in history] == pytest.approx(expected, rel=1e-9)
    assert history[0]["lr"] == lr and history[-1]["lr"] < 0.05 * lr
    final = torch_load(tmp_path / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"]
    assert final == pytest.approx(0.0, abs=1e-15)  # after the last step: annealed to 0
    assert lr_factor("cosine", steps)(steps) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor("cosine", steps)(steps + 5) == pytest.approx(0.0, abs=1e-15)  # never wraps around


def test_history_logs_the_rate_each_epoch_trained_at(digits):
    # Cosine over 2 epochs, per step: the second epoch starts half way, at lr / 2.
    cfg = small_cfg("triplet-hinge", epochs=2, lr=1e-3, lr_schedule="cosine")
    _, _, history = fit(cfg, digits)
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 5e-4])
    cfg = small_cfg("triplet-hinge", epochs=2, lr=1e-3)
    assert [r["lr"] for r in fit(cfg, digits)[2]] == [1e-3, 1e-3]
    assert lr_factor("constant", 10)(7) == 1.0


class FakeTrunk(nn.Module):
    """A stand-in for a timm trunk: ``trunk_parameters()`` names the pretrained part."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, 16), nn.ReLU())
        self.embedder = nn.Linear(16, out_dim)

    def trunk_parameters(self):
        return self.trunk.parameters()

    def forward(self, x):
        return self.embedder(self.trunk(x))


def method_with_trunk(cfg: RunConfig, data) -> Method:
    method = build_method(cfg, data)
    torch.manual_seed(0)
    method.encoder = FakeTrunk(64, cfg.embedding_dim)
    return method


def test_trunk_lr_is_its_own_param_group(digits):
    cfg = small_cfg("pml:ArcFaceLoss", lr=1e-3, trunk_lr=1e-5)
    method = method_with_trunk(cfg, digits)
    opt = make_optimizer(method, cfg.train_config())
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"main", "trunk"}
    assert groups["main"]["lr"] == 1e-3 and groups["trunk"]["lr"] == 1e-5
    trunk = {id(p) for p in method.encoder.trunk_parameters()}
    main = {id(p) for p in groups["main"]["params"]}
    assert {id(p) for p in groups["trunk"]["params"]} == trunk
    assert not main & trunk
    assert main | trunk == {id(p) for p in method.parameters()}  # the loss's own weights (ArcFace's W) included
    assert any(p is method.loss_fn.W for p in groups["main"]["params"])

    # Without trunk_lr the trunk trains at lr, in one group.
    one = make_optimizer(method, dataclasses.replace(cfg, trunk_lr=None).train_config())
    assert len(one.param_groups) == 1 and one.param_groups[0]["lr"] == 1e-3
    assert len(one.param_groups[0]["params"]) == len(list(method.parameters()))

    # A frozen trunk is left out (and its group with it).
    for p in method.encoder.trunk_parameters():
        p.requires_grad_(False)
    frozen = make_optimizer(method, cfg.train_config())
    assert [g["name"] for g in frozen.param_groups] == ["main"]
    for p in method.parameters():
        p.requires_grad_(False)
    with pytest.raises(DMLBenchError, match="nothing to train"):
        make_optimizer(method, cfg.train_config())


def test_trunk_trains_at_trunk_lr(digits, tmp_path):
    lr, trunk_lr = 1e-2, 1e-6
    cfg = small_cfg("triplet-hinge", lr=lr, trunk_lr=trunk_lr, lr_schedule="cosine", steps=6)
    method = method_with_trunk(cfg, digits)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    history = Trainer(method, digits, cfg.train_config(), run_dir=tmp_path).fit()
    assert len(history) == 2
    groups = torch_load(tmp_path / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"]) for g in groups] == [("main", lr), ("trunk", trunk_lr)]
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-15) for g in groups)  # both annealed by the schedule
    after = method.state_dict()
    # Adam moves a parameter by about lr per step: the trunk by ~1e-6, the embedder by ~1e-2.
    trunk_moved = max(float((after[k] - before[k]).abs().max()) for k in before if k.startswith("encoder.trunk"))
    head_moved = max(float((after[k] - before[k]).abs().max()) for k in before if k.startswith("encoder.embedder"))
    assert 0 < trunk_moved < 6 * trunk_lr * 3
    assert head_moved > 100 * trunk_moved


# ---------------------------------------------------------------- loss terms and their weights


def test_loss_terms_logged_every_epoch_with_weights(digits):
    cfg = small_cfg("tvae", epochs=3, method_params=with_weights("tvae", triplet=10.0))
    _, trainer, history = fit(cfg, digits)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert trainer.history == history
    for r in history:
        assert {"epoch", "step", "recon", "kl", "triplet", "loss", "lr", "seconds", "images_per_s"} <= set(r)
        assert r["triplet"] > 0
        assert r["loss"] == pytest.approx(r["recon"] + r["kl"] + 10.0 * r["triplet"], rel=1e-5)
        assert r["lr"] == cfg.lr
        assert r["seconds"] > 0 and r["images_per_s"] == pytest.approx(4 * 63 / r["seconds"])  # 4 steps of 63

    cfg0 = small_cfg("tvae", epochs=1, method_params=with_weights("tvae", triplet=0.0))
    row = fit(cfg0, digits)[2][0]
    assert row["triplet"] > 0  # still computed and logged ...
    assert row["loss"] == pytest.approx(row["recon"] + row["kl"], rel=1e-5)  # ... but not in the total
    # recon and kl are about the same in both first epochs; the weighted triplet term is the difference.
    assert history[0]["loss"] - row["loss"] == pytest.approx(10.0 * history[0]["triplet"], rel=0.2)


@pytest.fixture
def odd_methods():
    """Test methods: one whose 'bad' term turns NaN at its 6th step, one returning undeclared terms."""

    @dataclass
    class TwoParams(Params):
        weights: dict[str, float] = field(default_factory=lambda: {"fine": 1.0, "bad": 1.0})

    @register_method("test-nan-loss")
    class NanLoss(Method):
        Params = TwoParams
        terms = ("fine", "bad")
        calls = 0

        def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
            self.calls += 1
            e = self.encoder(batch.x)
            bad = e.pow(2).mean() * (float("nan") if self.calls >= 6 else 1.0)
            return {"fine": e.pow(2).mean(), "bad": bad}

    @register_method("test-wrong-terms")
    class WrongTerms(Method):
        Params = TwoParams
        terms = ("fine", "bad")

        def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
            e = self.encoder(batch.x)
            return {"fine": e.pow(2).mean(), "worse": e.abs().mean()}

    try:
        yield NanLoss, WrongTerms
    finally:
        METHODS.remove("test-nan-loss")
        METHODS.remove("test-wrong-terms")


def test_nan_loss_raises_clear_error_naming_the_term(digits, odd_methods, tmp_path):
    cfg = small_cfg("test-nan-loss", epochs=3)  # 4 steps per epoch: NaN at epoch 2, step 2
    epochs_done = []
    with pytest.raises(NonFiniteLossError) as e:
        fit(cfg, digits, run_dir=tmp_path, callbacks=(lambda t, row: epochs_done.append(row["epoch"]),))
    msg = str(e.value)
    assert isinstance(e.value, DMLBenchError) and "\n" not in msg
    assert "test-nan-loss" in msg and "bad" in msg and "fine" not in msg
    assert "epoch 2 step 2" in msg and "lr" in msg and "--" not in msg  # no CLI flags in library messages
    assert epochs_done == [1]
    assert torch_load(tmp_path / "checkpoint.pt")["epoch"] == 1  # the NaN epoch is never checkpointed


def test_huge_learning_rate_raises_non_finite(digits, tmp_path):
    cfg = small_cfg("triplet-hinge", lr=1e30, epochs=3)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        fit(cfg, digits, run_dir=tmp_path)


def test_method_returning_undeclared_terms_is_a_one_line_error(digits, odd_methods):
    cfg = small_cfg("test-wrong-terms")
    with pytest.raises(DMLBenchError) as e:
        fit(cfg, digits)
    msg = str(e.value)
    assert "\n" not in msg and "test-wrong-terms" in msg
    assert "['fine', 'worse']" in msg and "('fine', 'bad')" in msg


# ---------------------------------------------------------------- checkpoints and resume


class Stop(Exception):
    pass


def stop_after(n: int):
    def callback(trainer, row):
        if row["epoch"] == n:
            raise Stop

    return callback


def test_checkpoint_each_epoch_and_resume_matches_uninterrupted(digits, tmp_path):
    # tvae draws from torch's global RNG every step: resuming must restore it too.
    cfg = small_cfg("tvae", epochs=4, epoch_size=192)

    full_dir = tmp_path / "full"
    seen = []

    def record(trainer, row):
        ckpt = torch_load(full_dir / "checkpoint.pt")  # weights_only=True
        seen.append((ckpt["epoch"], ckpt["step"], len(ckpt["history"]), row["epoch"], ckpt["run_id"]))

    full, _, full_history = fit(cfg, digits, run_dir=full_dir, callbacks=(record,))
    assert seen == [(e, 3 * e, e, e, cfg.run_id()) for e in (1, 2, 3, 4)]

    part_dir = tmp_path / "part"
    with pytest.raises(Stop):
        fit(cfg, digits, run_dir=part_dir, callbacks=(stop_after(2),))
    assert torch_load(part_dir / "checkpoint.pt")["epoch"] == 2

    new_rows = []
    resumed, trainer, history = fit(cfg, digits, run_dir=part_dir,  # fresh weights, as after a restart
                                    callbacks=(lambda t, row: new_rows.append(row["epoch"]),))
    assert new_rows == [3, 4]  # only the missing epochs ran
    assert trainer.steps_done == cfg.steps == 12
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for a, b in zip(history, full_history):
        for k in ("step", "recon", "kl", "triplet", "loss", "lr"):
            assert a[k] == b[k], (a["epoch"], k)
    assert states_equal(full.state_dict(), resumed.state_dict())

    # A finished run is not trained again.
    again, trainer, history = fit(cfg, digits, run_dir=part_dir, callbacks=(stop_after(1),))
    assert len(history) == 4 and trainer.steps_done == 12
    assert states_equal(again.state_dict(), full.state_dict())


def test_checkpoint_loads_weights_only(digits, tmp_path):
    cfg = small_cfg("pml:ArcFaceLoss", epochs=1)
    method, _, _ = fit(cfg, digits, run_dir=tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # plain torch, the strict loader
    assert {"epoch", "step", "run_id", "model", "optimizer", "scheduler", "rng", "history", "cuda_rng"} <= set(ckpt)
    assert states_equal(ckpt["model"], method.state_dict())
    assert "loss_fn.W" in ckpt["model"]  # a loss's own weights are saved with the encoder


def test_corrupt_checkpoint_starts_afresh_with_a_warning(digits, tmp_path, caplog):
    cfg = small_cfg("siamese", epochs=2)
    reference, _, ref_history = fit(cfg, digits)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02 truncated")
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        method, _, history = fit(cfg, digits, run_dir=tmp_path)
    assert "checkpoint.pt" in caplog.text and "afresh" in caplog.text
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["loss"] for r in history] == [r["loss"] for r in ref_history]
    assert states_equal(method.state_dict(), reference.state_dict())
    assert (tmp_path / "checkpoint.corrupt").read_bytes() == b"\x80\x02 truncated"  # kept for a look
    assert torch_load(tmp_path / "checkpoint.pt")["epoch"] == 2


def test_checkpoint_of_another_config_is_not_resumed(digits, tmp_path, caplog):
    first = small_cfg("siamese", epochs=2, lr=1e-3)
    fit(first, digits, run_dir=tmp_path)
    other = small_cfg("siamese", epochs=3, lr=3e-3)
    assert other.run_id() != first.run_id()
    reference, _, ref_history = fit(other, digits)
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        method, _, history = fit(other, digits, run_dir=tmp_path)
    assert "another configuration" in caplog.text
    assert [r["epoch"] for r in history] == [1, 2, 3]  # all of it trained, none taken over
    assert [r["loss"] for r in history] == [r["loss"] for r in ref_history]
    assert states_equal(method.state_dict(), reference.state_dict())
    assert torch_load(tmp_path / "checkpoint.pt")["run_id"] == other.run_id()


def test_no_run_dir_writes_nothing(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = small_cfg("siamese", epochs=1)
    assert len(fit(cfg, digits)[2]) == 1
    assert list(tmp_path.iterdir()) == []


def test_raw_is_not_trained(digits, tmp_path):
    cfg = untrained(dataclasses.replace(small_cfg("raw"), method="raw"))
    assert cfg.steps == 0
    method, trainer, history = fit(cfg, digits, run_dir=tmp_path)
    assert history == [] and trainer.steps_done == 0
    assert not (tmp_path / "checkpoint.pt").exists()


def test_callbacks_get_the_trainer_and_the_row(digits):
    rows = []
    cfg = small_cfg("npair", epochs=2)
    _, trainer, history = fit(cfg, digits, callbacks=(lambda t, row: rows.append((t, row)),))
    assert [r for _, r in rows] == history
    assert all(t is trainer for t, _ in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(DMLBenchError, match="CUDA is not available") as e:
        resolve_device("cuda")
    assert "use cpu" in str(e.value) and "--device" not in str(e.value)
    assert resolve_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------- seeds


def test_same_seed_same_run_other_seed_other_run(digits):
    cfg = small_cfg("tvae", epochs=2)
    a, _, ha = fit(cfg, digits)
    b, _, hb = fit(cfg, digits)
    assert states_equal(a.state_dict(), b.state_dict())
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]
    other = dataclasses.replace(cfg, seed=1)
    c, _, hc = fit(other, digits)
    assert not states_equal(a.state_dict(), c.state_dict())
    assert [r["loss"] for r in ha] != [r["loss"] for r in hc]
    # The seed decides the initial weights too.
    assert states_equal(build_method(cfg, digits).state_dict(), build_method(cfg, digits).state_dict())
    assert not states_equal(build_method(cfg, digits).state_dict(), build_method(other, digits).state_dict())


def test_seed_everything_and_epoch_generators():
    seed_everything(3)
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first
    # Each (seed, epoch, stream) has its own generator, whatever was drawn before it.
    draws = {(s, e, k): torch.rand(4, generator=epoch_generator(s, e, k))
             for s in (0, 1) for e in (0, 1, 2) for k in (0, 1)}
    assert torch.equal(draws[(1, 2, 0)], torch.rand(4, generator=epoch_generator(1, 2, 0)))
    values = [tuple(v.tolist()) for v in draws.values()]
    assert len(set(values)) == len(values)
