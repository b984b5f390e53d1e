"""Batch kinds (dmlbench.blocks.sampling): layouts, an epoch's indices, the tuples each kind yields.

A kind owns the images per step and the group size (:meth:`layout`), draws an epoch's indices in
one call (:meth:`epoch_indices`), and turns a gathered batch into the tuples a method reads
(:meth:`batch`: ``pairs``, ``triplets`` or ``groups``). These tests check each against the
labels it was drawn from.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from dmlbench.blocks.batches import PAIRS, PLAIN, TRIPLETS, Balanced, Batch, Layout, Pairs, Plain, Triplets
from dmlbench.blocks.sampling import ClassIndex, balanced_indices, random_triplets
from dmlbench.core.errors import DMLBenchError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Deliberately unbalanced: a 2-image class, a 3-image class and two large ones.
SKEWED = torch.tensor([0] * 2 + [1] * 3 + [2] * 40 + [3] * 35)[torch.randperm(80, generator=gen(1))]


@pytest.fixture(scope="module")
def y_digits(digits) -> torch.Tensor:
    return torch.from_numpy(digits.train.y)


@pytest.fixture(scope="module")
def index_digits(y_digits) -> ClassIndex:
    return ClassIndex(y_digits)


def draw(kind, y: torch.Tensor, batch_size: int, steps: int, seed: int = 0, index: ClassIndex | None = None):
    """(layout, indices (steps, per_step)) for ``kind`` on labels ``y``, as the trainer draws them."""
    layout = kind.layout(batch_size, int(y.unique().numel()))
    if index is None and kind.needs_index:
        index = ClassIndex(y)
    return layout, kind.epoch_indices(index, len(y), layout, steps, gen(seed))


# ---------------------------------------------------------------- layouts


def test_layouts_round_the_batch_to_whole_tuples():
    assert PLAIN.layout(64, 10) == Layout(64)
    assert PAIRS.layout(65, 10) == Layout(64)
    assert TRIPLETS.layout(64, 10) == Layout(63)
    # Balanced: m images of as many classes as fit, whole groups per step.
    assert Balanced(m=4).layout(64, 10) == Layout(40, 40)
    assert Balanced(m=4).layout(64, 20) == Layout(64, 64)
    assert Balanced(m=4, classes_per_group=5).layout(64, 10) == Layout(60, 20)
    assert Balanced(m=4, classes_per_group=5).layout(12, 10) == Layout(12, 12)  # fewer classes fit


def test_npair_layout_holds_every_class_and_refuses_small_batches():
    npair = Balanced(m=2, classes_per_group=-1)
    assert npair.layout(64, 10) == Layout(60, 20)
    assert npair.layout(20, 10) == Layout(20, 20)
    with pytest.raises(DMLBenchError, match="batch_size=16") as e:
        npair.layout(16, 10)
    assert "20" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DMLBenchError, match="m=0"):
        Balanced(m=0).layout(64, 10)


def test_kinds_are_frozen_values_with_names():
    assert (PLAIN, PAIRS, TRIPLETS) == (Plain(), Pairs(), Triplets())
    assert Balanced(m=2) == Balanced(m=2) and Balanced(m=2) != Balanced(m=3)
    assert {PLAIN.name, PAIRS.name, TRIPLETS.name, Balanced().name} == {"plain", "pairs", "triplets", "balanced"}
    assert "every class" in Balanced(m=2, classes_per_group=-1).describe()
    assert not PLAIN.needs_index and PAIRS.needs_index and TRIPLETS.needs_index and Balanced().needs_index
    with pytest.raises(dataclasses.FrozenInstanceError):
        Balanced(m=2).m = 3  # frozen: a method's kind cannot be changed under it


# ---------------------------------------------------------------- each kind's indices


def test_pairs_half_positive_half_negative(y_digits, index_digits):
    y = y_digits
    layout, idx = draw(PAIRS, y, 40, 6, index=index_digits)
    assert idx.shape == (6, 40)
    first, second = idx[:, :20], idx[:, 20:]
    same = y[first] == y[second]
    assert same[:, :10].all() and not same[:, 10:].any()  # the batch's first half of pairs is positive
    assert (first[:, :10] != second[:, :10]).all()  # a positive pair is two different images


def test_triplets_are_valid(y_digits, index_digits):
    y = y_digits
    layout, idx = draw(TRIPLETS, y, 30, 8, index=index_digits)
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
def test_balanced_batches_have_m_per_class(y_digits, index_digits, m):
    y = y_digits
    group = m * 5  # 5 classes per group
    layout, idx = draw(Balanced(m=m, classes_per_group=5), y, 2 * group, 5, index=index_digits)
    assert layout == Layout(2 * group, group)
    assert idx.shape == (5, 2 * group)
    for g in idx.reshape(-1, group):
        classes, counts = y[g].unique(return_counts=True)
        assert len(classes) == 5
        assert (counts == m).all()
        assert len(set(g.tolist())) == group  # no image twice
        # laid out as m consecutive images per class
        assert (y[g].view(5, m) == y[g].view(5, m)[:, :1]).all()


def test_npair_groups_hold_every_class_twice(y_digits, index_digits):
    y = y_digits
    layout, idx = draw(Balanced(m=2, classes_per_group=-1), y, 60, 3, index=index_digits)
    assert layout == Layout(60, 20)
    for g in idx.reshape(-1, 20):
        assert sorted(y[g].tolist()) == sorted(list(range(10)) * 2)
        assert len(set(g.tolist())) == 20


def test_balanced_batches_have_distinct_classes_and_members():
    y = torch.arange(600) % 10
    idx = balanced_indices(ClassIndex(y), steps=50, per_step=120, group=40, m=4, gen=gen(0))
    assert idx.shape == (50, 120)
    cells = idx.view(-1, 10, 4)  # (groups, classes, m)
    labels = y[cells]
    assert bool((labels == labels[..., :1]).all())  # m images of one class, consecutive
    assert all(len(set(g[:, 0].tolist())) == 10 for g in labels)  # distinct classes per group
    assert all(len(set(c.tolist())) == 4 for c in cells.reshape(-1, 4))  # no image twice in a class
    # Every class and most images get drawn over an epoch: no starvation.
    assert len(set(idx.flatten().tolist())) > 0.9 * 600


def test_balanced_tops_up_small_classes_without_duplicates():
    # Classes of 2 and 3 images with m=4: a small class gives all its images (never one twice, which
    # would be a zero-distance positive), and the group is filled with further classes.
    counts = [2, 3, 5, 8, 8, 8]
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])[torch.randperm(sum(counts), generator=gen(2))]
    layout, idx = draw(Balanced(m=4), y, 16, 200, seed=3)
    assert layout == Layout(16, 16)
    seen = set()
    for g in idx:
        assert len(set(g.tolist())) == 16  # no image twice in a group
        labels = y[g].tolist()
        _, per_class = torch.unique(y[g], return_counts=True)
        assert int(per_class.max()) <= 4  # at most m of a class
        # each class's images are consecutive
        runs = [k for i, k in enumerate(labels) if i == 0 or labels[i - 1] != k]
        assert len(runs) == len(set(runs))
        seen |= set(labels)
    assert seen == set(range(len(counts)))  # the small classes are drawn too


def test_balanced_refuses_what_it_cannot_fill():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(DMLBenchError, match="too few images"):
        draw(Balanced(m=4), y, 12, 1)
    with pytest.raises(DMLBenchError, match="needs 5 classes"):
        balanced_indices(ClassIndex(torch.arange(40) % 4), steps=1, per_step=10, group=10, m=2, gen=gen())


def test_batch_tuples_match_the_drawn_indices(y_digits, index_digits):
    """What a method reads (pairs, triplets, groups) points at the right rows of the gathered batch."""
    y = y_digits
    x = torch.arange(len(y)).float().view(-1, 1, 1, 1)  # image i holds the number i
    for kind, batch_size in ((PLAIN, 60), (PAIRS, 60), (TRIPLETS, 60), (Balanced(m=3), 60),
                             (Balanced(m=2, classes_per_group=-1), 60)):
        layout, idx = draw(kind, y, batch_size, 2, index=index_digits)
        for row in idx:
            b = kind.batch(x[row], y[row], layout)
            assert isinstance(b, Batch)
            assert torch.equal(b.x.flatten().long(), row) and torch.equal(b.y, y[row])
            if kind is PLAIN:
                assert b.pairs is None and b.triplets is None and b.groups is None
            if kind is PAIRS:
                i, j = b.pairs
                assert len(i) == len(j) == 30 and b.triplets is None
                assert torch.equal(b.x[i].flatten().long(), row[:30]) and torch.equal(b.x[j].flatten().long(), row[30:])
                same = b.y[i] == b.y[j]
                assert same[:15].all() and not same[15:].any()
            if kind is TRIPLETS:
                a, p, n = b.triplets
                assert len(a) == 20 and b.pairs is None
                assert (b.y[a] == b.y[p]).all() and (a != p).all() and (b.y[a] != b.y[n]).all()
            if isinstance(kind, Balanced):
                assert b.groups.shape == (layout.per_step // layout.group, layout.group)
                assert torch.equal(b.groups.flatten(), torch.arange(len(row)))
                for g in b.groups:
                    _, c = b.y[g].unique(return_counts=True)
                    assert (c == kind.m).all()


# ---------------------------------------------------------------- seeds, coverage, small classes


@pytest.mark.parametrize("kind", [PLAIN, PAIRS, TRIPLETS, Balanced(m=4), Balanced(m=2, classes_per_group=-1)],
                         ids=lambda k: k.describe())
def test_same_seed_same_indices(y_digits, index_digits, kind):
    y = y_digits
    _, a = draw(kind, y, 60, 4, seed=5, index=index_digits)
    _, b = draw(kind, y, 60, 4, seed=5, index=index_digits)
    _, c = draw(kind, y, 60, 4, seed=6, index=index_digits)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.long and a.min() >= 0 and a.max() < len(y)


def test_anchors_cover_every_image_each_pass():
    n = len(SKEWED)
    _, idx = draw(PLAIN, SKEWED, 20, 8, seed=2)  # 160 = two passes
    passes = idx.reshape(-1)
    assert sorted(passes[:n].tolist()) == list(range(n))
    assert sorted(passes[n:].tolist()) == list(range(n))
    _, t = draw(TRIPLETS, SKEWED, 30, 8, seed=2)  # anchors: the first 10 of each row
    assert sorted(t[:, :10].reshape(-1).tolist()) == list(range(n))
    _, p = draw(PAIRS, SKEWED, 20, 8, seed=2)  # firsts: the first 10 of each row
    assert sorted(p[:, :10].reshape(-1).tolist()) == list(range(n))


def test_no_class_starves():
    # Over a few passes every class, the 2-image one included, shows up as anchor, positive and negative,
    # and each small-class anchor gets every other member of its class as a positive.
    _, idx = draw(TRIPLETS, SKEWED, 30, 40, seed=4)
    a, p, n = idx[:, :10].reshape(-1), idx[:, 10:20].reshape(-1), idx[:, 20:].reshape(-1)
    for part in (a, p, n):
        assert set(SKEWED[part].tolist()) == {0, 1, 2, 3}
    small = torch.nonzero(SKEWED == 1).flatten().tolist()
    for anchor in small:
        partners = set(p[a == anchor].tolist())
        assert partners == set(small) - {anchor}
    _, pairs = draw(PAIRS, SKEWED, 40, 40, seed=4)
    assert set(SKEWED[pairs[:, 20:]].reshape(-1).tolist()) == {0, 1, 2, 3}
    layout, bal = draw(Balanced(m=2), SKEWED, 8, 30, seed=4)  # all 4 classes per group
    assert layout == Layout(8, 8)
    for g in bal:
        assert sorted(SKEWED[g].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_class_index_rejects_unusable_labels():
    with pytest.raises(DMLBenchError, match="1 class"):
        ClassIndex(torch.zeros(5, dtype=torch.long))
    with pytest.raises(DMLBenchError, match="no training class has 2 images"):
        ClassIndex(torch.tensor([0, 1, 2]))


def test_single_image_classes_are_negatives_only(caplog):
    # Class 1 has one image (index 2): no positive exists for it, so it is never an anchor or a
    # positive (with a warning), but it still serves as a negative.
    y = torch.tensor([0, 0, 1, 2, 2, 2, 0, 2])
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        index = ClassIndex(y)
    assert "1 of 3 training classes have a single image" in caplog.text
    layout = TRIPLETS.layout(30, 3)
    idx = TRIPLETS.epoch_indices(index, len(y), layout, 50, gen(0))
    a, p, n = idx[:, :10], idx[:, 10:20], idx[:, 20:]
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()
    assert 2 not in a.tolist() and 2 not in p.tolist()
    assert 2 in n.flatten().tolist()
    assert sorted(set(a.flatten().tolist())) == [0, 1, 3, 4, 5, 6, 7]  # every other image is an anchor
    pairs = PAIRS.epoch_indices(index, len(y), PAIRS.layout(20, 3), 50, gen(0))
    assert 2 not in pairs[:, :10].tolist() and 2 not in pairs[:, 10:15].tolist()  # firsts and positives
    assert 2 in pairs[:, 15:].flatten().tolist()  # a negative partner
    t = random_triplets(y, 500, gen(1), index)
    assert 2 not in t[:, :2].tolist() and 2 in t[:, 2].tolist()
    bal = Balanced(m=2).epoch_indices(index, len(y), Layout(4, 4), 30, gen(0))
    assert 2 not in bal.tolist()


@pytest.mark.parametrize("name", ["siamese", "triplet-softmax", "triplet-hinge", "npair", "vae", "tvae",
                                  "pml:MultiSimilarityLoss"])
def test_a_methods_batch_kind_is_known_from_its_options_alone(name):
    """The torch-free batch-size check reads each method's kind without building it: the same kind
    as the built method's, for every option that changes it."""
    from dmlbench.blocks.batches import method_batch_kind
    from dmlbench.core.params import apply_overrides
    from dmlbench.methods import get_method

    cls = get_method(name)
    options = [{}] + ([{"mining": "all"}] if name == "triplet-hinge" else []) + \
        ([{"m_per_class": 4}] if name.startswith("pml:") else [])
    for opts in options:
        params = apply_overrides(cls.Params(), opts, name)
        built = cls(params, input_shape=(1, 8, 8), embedding_dim=4, encoder="mlp", num_classes=10)
        assert method_batch_kind(cls, params) == built.batch_kind, (name, opts)


def test_a_batch_too_small_for_a_methods_batches_is_refused_before_any_run(tmp_path):
    from typer.testing import CliRunner

    from dmlbench.cli import app

    cases = [("run", "siamese", 1, "siamese: batch_size=1 is too small for pairs batches; use 2 or more"),
             ("run", "npair", 12, "npair: batch_size=12 is smaller than one group of 10 classes x 2; use a batch size "
                                  "of 20 or more"),
             ("tune", "triplet-hinge", 2, "triplet-hinge: batch_size=2 is too small for triplets batches; use 3 or more")]
    for cmd, method, batch, message in cases:
        r = CliRunner().invoke(app, [cmd, "--methods", method, "--dataset", "digits", "--batch-size", str(batch),
                                     "--out", str(tmp_path)])
        assert r.exit_code == 2 and r.stderr.strip() == f"error: {message}", r.stderr
    assert not any(tmp_path.iterdir())  # no run folder, no study
