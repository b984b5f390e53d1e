"""Batch sampling and the trainer: logging, weights, non-finite losses, checkpoints and resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import torch

from dmlbench.config import RunConfig
from dmlbench.errors import DMLBenchError, NonFiniteLossError
from dmlbench.methods import METHODS, Batch, Method, Params, get_method, register_method
from dmlbench.runner import build_method
from dmlbench.sampling import ClassIndex, epoch_indices, random_triplets
from dmlbench.trainer import Trainer, batch_layout, resolve_device


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Deliberately unbalanced: a 2-image class, a 3-image class and two large ones.
SKEWED = torch.tensor([0] * 2 + [1] * 3 + [2] * 40 + [3] * 35)[torch.randperm(80, generator=gen(1))]


# ---------------------------------------------------------------- sampling

def test_pairs_half_positive_half_negative(digits):
    y = digits.y_train
    idx = epoch_indices("pairs", y, 40, 6, gen())
    assert idx.shape == (6, 40)
    first, second = idx[:, :20], idx[:, 20:]
    same = y[first] == y[second]
    assert same[:, :10].all() and not same[:, 10:].any()  # the batch's first half of pairs is positive
    assert (first[:, :10] != second[:, :10]).all()  # a positive pair is two different images


def test_triplets_are_valid(digits):
    y = digits.y_train
    idx = epoch_indices("triplets", y, 30, 8, gen())
    assert idx.shape == (8, 30)
    a, p, n = idx[:, :10], idx[:, 10:20], idx[:, 20:]
    assert (y[a] == y[p]).all()
    assert (a != p).all()
    assert (y[a] != y[n]).all()


def test_random_triplets_valid_on_skewed_labels():
    t = random_triplets(SKEWED, 2000, gen(3))
    assert t.shape == (2000, 3)
    a, p, n = t.unbind(1)
    assert (SKEWED[a] == SKEWED[p]).all() and (a != p).all() and (SKEWED[a] != SKEWED[n]).all()


@pytest.mark.parametrize("m", [2, 4])
def test_balanced_batches_have_m_per_class(digits, m):
    y = digits.y_train
    group = m * 5  # 5 classes per group
    idx = epoch_indices("balanced", y, 2 * group, 5, gen(), m=m, group=group)
    assert idx.shape == (5, 2 * group)
    for g in idx.reshape(-1, group):
        classes, counts = y[g].unique(return_counts=True)
        assert len(classes) == 5
        assert (counts == m).all()
        # laid out as m consecutive images per class
        assert (y[g].view(5, m) == y[g].view(5, m)[:, :1]).all()


def test_npair_groups_hold_every_class_twice(digits):
    y = digits.y_train
    idx = epoch_indices("balanced", y, 60, 3, gen(), m=2, group=20)
    for g in idx.reshape(-1, 20):
        assert sorted(y[g].tolist()) == sorted(list(range(10)) * 2)


@pytest.mark.parametrize("kind, extra", [("plain", {}), ("pairs", {}), ("triplets", {}),
                                         ("balanced", {"m": 4, "group": 20})])
def test_same_seed_same_indices(digits, kind, extra):
    y = digits.y_train
    a = epoch_indices(kind, y, 60, 4, gen(5), **extra)
    b = epoch_indices(kind, y, 60, 4, gen(5), **extra)
    c = epoch_indices(kind, y, 60, 4, gen(6), **extra)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < len(y)


def test_anchors_cover_every_image_each_pass():
    n = len(SKEWED)
    idx = epoch_indices("plain", SKEWED, 20, 8, gen(2))  # 160 = two passes
    passes = idx.reshape(-1)
    assert sorted(passes[:n].tolist()) == list(range(n))
    assert sorted(passes[n:].tolist()) == list(range(n))
    t = epoch_indices("triplets", SKEWED, 30, 8, gen(2))  # anchors: the first 10 of each row
    assert sorted(t[:, :10].reshape(-1).tolist()) == list(range(n))


def test_no_class_starves():
    # Over a few passes every class, the 2-image one included, shows up as anchor, positive and negative,
    # and each small-class anchor gets every other member of its class as a positive.
    idx = epoch_indices("triplets", SKEWED, 30, 40, gen(4))
    a, p, n = idx[:, :10].reshape(-1), idx[:, 10:20].reshape(-1), idx[:, 20:].reshape(-1)
    for part in (a, p, n):
        assert set(SKEWED[part].tolist()) == {0, 1, 2, 3}
    small = torch.nonzero(SKEWED == 1).flatten().tolist()
    for anchor in small:
        partners = set(p[a == anchor].tolist())
        assert partners == set(small) - {anchor}
    pairs = epoch_indices("pairs", SKEWED, 40, 40, gen(4))
    assert set(SKEWED[pairs[:, 20:]].reshape(-1).tolist()) == {0, 1, 2, 3}
    bal = epoch_indices("balanced", SKEWED, 8, 30, gen(4), m=2, group=8)  # all 4 classes per group
    for g in bal:
        assert sorted(SKEWED[g].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_class_index_rejects_unusable_labels():
    with pytest.raises(DMLBenchError, match="2 classes"):
        ClassIndex(torch.zeros(5, dtype=torch.long))
    with pytest.raises(DMLBenchError, match="at least 2 training images"):
        ClassIndex(torch.tensor([0, 0, 1, 2, 2]))


# ---------------------------------------------------------------- the trainer

def small_cfg(method: str, **kw) -> RunConfig:
    base = dict(dataset="digits", method=method, seed=0, epochs=2, epoch_size=256, batch_size=64, encoder="mlp",
                embedding_dim=8)
    base.update(kw)
    return RunConfig(**base).resolved()


def with_weights(method: str, **weights) -> dict:
    p = get_method(method).Params()
    p.weights = {**p.weights, **weights}
    return dataclasses.asdict(p)


class _Tiny:
    """Just enough of a Data for build_method."""

    input_shape = (1, 8, 8)
    y_train = torch.arange(10)


def test_batch_layout():
    m = build_method(small_cfg("npair"), _Tiny())
    assert batch_layout(m, small_cfg("npair", batch_size=64), 10) == (60, 20)
    with pytest.raises(DMLBenchError, match="batch-size"):
        batch_layout(m, small_cfg("npair", batch_size=16), 10)


def test_loss_terms_logged_every_epoch_with_weights(digits):
    cfg = small_cfg("tvae", epochs=3, method_params=with_weights("tvae", triplet=10.0))
    history = Trainer(build_method(cfg, digits), digits, cfg).fit()
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for r in history:
        assert {"recon", "kl", "triplet", "loss", "lr", "seconds", "images_per_s"} <= set(r)
        assert r["triplet"] > 0
        assert r["loss"] == pytest.approx(r["recon"] + r["kl"] + 10.0 * r["triplet"], rel=1e-5)
        assert r["lr"] == cfg.lr

    cfg0 = small_cfg("tvae", epochs=1, method_params=with_weights("tvae", triplet=0.0))
    row = Trainer(build_method(cfg0, digits), digits, cfg0).fit()[0]
    assert row["triplet"] > 0  # still computed and logged ...
    assert row["loss"] == pytest.approx(row["recon"] + row["kl"], rel=1e-5)  # ... but not in the total
    # recon and kl are about the same in both first epochs; the weighted triplet term is the difference.
    assert history[0]["loss"] - row["loss"] == pytest.approx(10.0 * history[0]["triplet"], rel=0.2)


@pytest.fixture
def nan_method():
    @dataclass
    class NanParams(Params):
        weights: dict[str, float] = field(default_factory=lambda: {"fine": 1.0, "bad": 1.0})

    @register_method("test-nan-loss")
    class NanLoss(Method):
        Params = NanParams

        def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
            e = self.encoder(batch.x)
            return {"fine": e.pow(2).mean(), "bad": e.sum() * float("nan")}

    try:
        yield NanLoss
    finally:
        METHODS.remove("test-nan-loss")


def test_nan_loss_raises_clear_error(digits, nan_method):
    cfg = small_cfg("test-nan-loss")
    with pytest.raises(NonFiniteLossError) as e:
        Trainer(build_method(cfg, digits), digits, cfg).fit()
    msg = str(e.value)
    assert "test-nan-loss" in msg and "bad" in msg and "fine" not in msg
    assert "epoch 1 step 1" in msg and "--lr" in msg
    assert isinstance(e.value, DMLBenchError)


def test_huge_learning_rate_raises_non_finite(digits, tmp_path):
    cfg = small_cfg("triplet-hinge", lr=1e30, epochs=3)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        Trainer(build_method(cfg, digits), digits, cfg, tmp_path).fit()


def _interrupt_after(n: int):
    class Stop(Exception):
        pass

    def on_epoch(history):
        if len(history) == n:
            raise Stop

    return Stop, on_epoch


def test_checkpoint_each_epoch_and_resume_matches_uninterrupted(digits, tmp_path):
    # tvae draws from torch's global RNG every step: resuming must restore it too.
    cfg = small_cfg("tvae", epochs=4, epoch_size=192)

    full_dir = tmp_path / "full"
    seen = []

    def record(history):
        ckpt = torch.load(full_dir / "checkpoint.pt", weights_only=False)
        seen.append((ckpt["epoch"], len(ckpt["history"]), history[-1]["epoch"]))

    full = build_method(cfg, digits)
    full_history = Trainer(full, digits, cfg, full_dir).fit(on_epoch=record)
    assert seen == [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)]

    part_dir = tmp_path / "part"
    Stop, stop_after_2 = _interrupt_after(2)
    with pytest.raises(Stop):
        Trainer(build_method(cfg, digits), digits, cfg, part_dir).fit(on_epoch=stop_after_2)
    assert torch.load(part_dir / "checkpoint.pt", weights_only=False)["epoch"] == 2

    resumed = build_method(cfg, digits)  # fresh weights, as after a restart
    new_rows = []
    history = Trainer(resumed, digits, cfg, part_dir).fit(on_epoch=lambda h: new_rows.append(h[-1]["epoch"]))
    assert new_rows == [3, 4]  # only the missing epochs ran
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for a, b in zip(history, full_history):
        for k in ("recon", "kl", "triplet", "loss"):
            assert a[k] == b[k], (a["epoch"], k)
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for k in full_state:
        assert torch.equal(full_state[k], resumed_state[k]), k

    # A finished run is not trained again.
    again = build_method(cfg, digits)
    assert len(Trainer(again, digits, cfg, part_dir).fit()) == 4
    for k, v in again.state_dict().items():
        assert torch.equal(v, full_state[k])


def test_no_run_dir_writes_nothing(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = small_cfg("siamese", epochs=1)
    assert len(Trainer(build_method(cfg, digits), digits, cfg).fit()) == 1
    assert list(tmp_path.iterdir()) == []


def test_raw_is_not_trained(digits):
    cfg = small_cfg("raw")
    assert Trainer(build_method(cfg, digits), digits, cfg).fit() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_a_clear_error(digits):
    with pytest.raises(DMLBenchError, match="CUDA is not available"):
        resolve_device("cuda")
    cfg = small_cfg("siamese", device="cuda")
    with pytest.raises(DMLBenchError, match="--device cpu"):
        Trainer(build_method(cfg, digits), digits, cfg)
