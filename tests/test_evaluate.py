"""The evaluation suite on hand-made embeddings whose answers are worked out by hand below.

Every expected number comes from reasoning in the comments (distances listed per query), not from
running the code; the one independent cross-check is pytorch-metric-learning's AccuracyCalculator.
"""

from __future__ import annotations

import numpy as np
import pytest

from dmlbench.evaluation import evaluate, exact_search, neighbors, probe
from dmlbench.evaluation.metrics import RECALL_KS


def retrieval_metrics(emb, labels, batch=None):
    """``batch``: search in tiny query blocks (the result budget cut to ~``batch`` rows)."""
    old = exact_search.RESULT_BUDGET
    if batch:
        exact_search.RESULT_BUDGET = batch * 12 * len(emb)
    try:
        summary, per_query = neighbors.retrieval_metrics(emb, labels)
    finally:
        exact_search.RESULT_BUDGET = old
    valid = ~np.isnan(per_query["map@r"])
    assert summary["map@r"] == pytest.approx(per_query["map@r"][valid].mean())
    return {k: v for k, v in summary.items() if k not in ("r_precision", "queries_without_positive")}


def triplet_accuracy(emb, triplets, margin):
    return evaluate.triplet_accuracy(emb, triplets, margin)[0]


def knn_accuracy(train, train_y, test, test_y, k, batch=None):
    acc, correct = neighbors.knn_classify(train, train_y, test, test_y, k)
    assert acc == pytest.approx(correct.mean())
    return acc


def svm_accuracy(train, train_y, test, test_y):
    r = probe.linear_probe(train, train_y, test, test_y, seed=0)
    return r.accuracy, r.confusion


RETRIEVAL_KEYS = {f"recall@{k}" for k in RECALL_KS} | {"precision@1", "map@r"}


def line(xs) -> np.ndarray:
    """1-D positions as float32 embeddings of dimension 2 (second coordinate 0)."""
    xs = np.asarray(xs, dtype=np.float32)
    return np.stack([xs, np.zeros_like(xs)], axis=1)


# --------------------------------------------------------------------------------------------
# Retrieval: Recall@K, precision@1, MAP@R
# --------------------------------------------------------------------------------------------

def test_perfect_separation_gives_one_everywhere():
    # 4 classes of 5 points each, tight clusters far apart: every neighbour within the class
    # comes before any other class's point.
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], dtype=np.float32)
    labels = np.repeat(np.arange(4), 5)
    emb = (centers[labels] + rng.normal(scale=0.1, size=(20, 3))).astype(np.float32)
    m = retrieval_metrics(emb, labels)
    assert set(m) == RETRIEVAL_KEYS
    for key, value in m.items():
        assert value == pytest.approx(1.0), key
    # Triplet accuracy with a margin far smaller than the gap between clusters.
    triplets = np.array([[0, 1, 5], [6, 9, 12], [13, 14, 19], [15, 18, 2]])
    t = triplet_accuracy(emb, triplets, margin=1.0)
    assert t == {"triplet_acc": 1.0, "triplet_acc_margin": 1.0}


def test_retrieval_alternating_classes_by_hand():
    # Positions and labels: i0=0 A, i1=1 B, i2=2.5 A, i3=4.5 B, i4=7 A, i5=10 B. R = 2 for all.
    # Neighbours (self excluded), relevance (same class):
    #   i0: i1(1) i2(2.5) i3(4.5) i4(7) i5(10)      -> 0 1 0 1 0   R@1 0, R@2 1, R@4 1; AP = (1/2)/2 = 1/4
    #   i1: i0(1) i2(1.5) i3(3.5) i4(6) i5(9)       -> 0 0 1 0 1   R@1 0, R@2 0, R@4 1; AP = 0
    #   i2: i1(1.5) i3(2) i0(2.5) i4(4.5) i5(7.5)   -> 0 0 1 1 0   R@1 0, R@2 0, R@4 1; AP = 0
    #   i3: i2(2) i4(2.5) i1(3.5) i0(4.5) i5(5.5)   -> 0 0 1 0 1   R@1 0, R@2 0, R@4 1; AP = 0
    #   i4: i3(2.5) i5(3) i2(4.5) i1(6) i0(7)       -> 0 0 1 0 1   R@1 0, R@2 0, R@4 1; AP = 0
    #   i5: i4(3) i3(5.5) i2(7.5) i1(9) i0(10)      -> 0 1 0 1 0   R@1 0, R@2 1, R@4 1; AP = 1/4
    # Recall@1 = 0, Recall@2 = 2/6, Recall@4 = Recall@8 = 1, MAP@R = (1/4 + 1/4)/6 = 1/12.
    emb = line([0, 1, 2.5, 4.5, 7, 10])
    labels = np.array([0, 1, 0, 1, 0, 1])
    m = retrieval_metrics(emb, labels)
    assert m["recall@1"] == pytest.approx(0.0)
    assert m["precision@1"] == pytest.approx(0.0)
    assert m["recall@2"] == pytest.approx(2 / 6)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["recall@8"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(1 / 12)


def test_retrieval_clustered_by_hand():
    # i0=0 A, i1=1 A, i2=2.5 B, i3=4.2 A, i4=6 B, i5=6.8 B. R = 2 for all.
    #   i0: i1(1,A) i2(2.5,B) i3(4.2,A) i4(6) i5(6.8)       -> 1 0 1 0 0   AP = (1/1)/2 = 1/2
    #   i1: i0(1,A) i2(1.5,B) i3(3.2,A) i4(5) i5(5.8)       -> 1 0 1 0 0   AP = 1/2
    #   i2: i1(1.5,A) i3(1.7,A) i0(2.5,A) i4(3.5,B) i5(4.3,B) -> 0 0 0 1 1 AP = 0, R@4 hit
    #   i3: i2(1.7,B) i4(1.8,B) i5(2.6,B) i1(3.2,A) i0(4.2,A) -> 0 0 0 1 1 AP = 0, R@4 hit
    #   i4: i5(.8,B) i3(1.8,A) i2(3.5,B) i1(5) i0(6)         -> 1 0 1 0 0  AP = 1/2
    #   i5: i4(.8,B) i3(2.6,A) i2(4.3,B) i1(5.8) i0(6.8)     -> 1 0 1 0 0  AP = 1/2
    # Recall@1 = Recall@2 = 4/6, Recall@4 = Recall@8 = 1, MAP@R = 4 * (1/2) / 6 = 1/3.
    emb = line([0, 1, 2.5, 4.2, 6, 6.8])
    labels = np.array([0, 0, 1, 0, 1, 1])
    m = retrieval_metrics(emb, labels)
    assert m["recall@1"] == pytest.approx(4 / 6)
    assert m["precision@1"] == pytest.approx(4 / 6)
    assert m["recall@2"] == pytest.approx(4 / 6)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["recall@8"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(1 / 3)


CASE_D_POS = [-0.5, 1, 2, 3, 4, 5, 6.5]
CASE_D_LAB = np.array([7, 3, 3, 3, 3, 3, 7])  # A = 7 (two items, R = 1), B = 3 (five items, R = 4)


def test_retrieval_recall_at_8_and_map_at_r_with_several_relevant():
    # A at -0.5 and 6.5; B at 1, 2, 3, 4, 5. (Ties only ever between items of one class.)
    # A(-0.5): B1 1.5, B2 2.5, B3 3.5, B4 4.5, B5 5.5, A 7 -> partner at rank 6: R@1,2,4 miss, R@8 hit; AP = 0
    # A(6.5):  B5 1.5, B4 2.5, B3 3.5, B2 4.5, B1 5.5, A 7 -> same: rank 6; AP = 0
    # B queries (R = 4, AP over the first 4 neighbours):
    #   B1: B2 1, A 1.5, B3 2, B4 3            -> 1 0 1 1: AP = (1 + 2/3 + 3/4)/4 = 29/48
    #   B2: B1 1, B3 1, B4 2, A 2.5            -> 1 1 1 0: AP = (1 + 1 + 1)/4 = 3/4
    #   B3: B2 1, B4 1, B1 2, B5 2             -> 1 1 1 1: AP = 1
    #   B4: B3 1, B5 1, B2 2, A 2.5            -> AP = 3/4
    #   B5: B4 1, A 1.5, B3 2, B2 3            -> AP = 29/48
    #   every B query has a B item first: R@K = 1 for all K.
    # Recall@1 = Recall@2 = Recall@4 = 5/7, Recall@8 = 7/7.
    # MAP@R = (0 + 0 + 29/48 + 3/4 + 1 + 3/4 + 29/48) / 7 = (89/24) / 7 = 89/168.
    emb = line(CASE_D_POS)
    m = retrieval_metrics(emb, CASE_D_LAB)
    assert m["recall@1"] == pytest.approx(5 / 7)
    assert m["recall@2"] == pytest.approx(5 / 7)
    assert m["recall@4"] == pytest.approx(5 / 7)
    assert m["recall@8"] == pytest.approx(1.0)
    assert m["precision@1"] == pytest.approx(5 / 7)
    assert m["map@r"] == pytest.approx(89 / 168)


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_retrieval_query_batches_give_the_same_numbers(batch):
    # The query index offset of each batch must be kept (self-exclusion by global index).
    emb = line(CASE_D_POS)
    m = retrieval_metrics(emb, CASE_D_LAB, batch=batch)
    assert m["recall@4"] == pytest.approx(5 / 7)
    assert m["recall@8"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(89 / 168)


def test_retrieval_permutation_invariant():
    # Shuffling the items changes faiss's order but not the metrics.
    perm = np.array([3, 6, 0, 5, 1, 4, 2])
    emb = line(CASE_D_POS)[perm]
    m = retrieval_metrics(emb, CASE_D_LAB[perm])
    assert m["recall@1"] == pytest.approx(5 / 7)
    assert m["map@r"] == pytest.approx(89 / 168)


def test_self_excluded_by_index_with_duplicate_points():
    # i0 and i1 are the same point with different classes; i2 and i3 likewise, far away.
    # Classes: A = {i0, i2}, B = {i1, i3}; R = 1 for every query.
    # Each query's nearest other item is its duplicate (distance 0, other class), so with the
    # query itself removed by index: Recall@1 = 0 and MAP@R = 0. Recall@4 = 1 (only 3 others).
    # If column 0 were dropped instead, a query listed after its duplicate (faiss breaks distance
    # ties by index: i1's row is [0, 1, ...]) would keep itself and score a hit.
    import faiss

    emb = np.array([[0, 0], [0, 0], [10, 0], [10, 0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    index = faiss.IndexFlatL2(2)
    index.add(emb)
    _, ids = index.search(emb, 2)
    # Precondition of this test: some query has its duplicate before itself in faiss order.
    assert any(ids[q, 0] != q for q in range(4))
    m = retrieval_metrics(emb, labels)
    assert m["recall@1"] == 0.0
    assert m["precision@1"] == 0.0
    assert m["map@r"] == 0.0
    assert m["recall@4"] == 1.0


def test_self_excluded_with_many_duplicates():
    # Five copies of one point, i0..i4 at the origin with labels A B B A B (A = 0, B = 1), and i5
    # (class A) at distance 50. Each class has 3 items, so R = 2 for every query.
    # For every origin query the 4 other origin items come first (distance 0), then i5.
    # Order-free: Recall@8 = 1 for everybody (the n - 1 = 5 others are all within 8).
    emb = np.zeros((6, 2), dtype=np.float32)
    emb[5] = [50, 0]
    labels = np.array([0, 1, 1, 0, 1, 0])
    m = retrieval_metrics(emb, labels)
    assert m["recall@8"] == 1.0
    # With exact self removal (faiss orders ties by index, so the kept rows are, in order):
    #   i0: 1B 2B 3A 4B 5A -> R@1 0; AP(R=2) = first 2: B B -> 0
    #   i1: 0A 2B 3A 4B 5A -> R@1 0 (B query); AP(R=2): A B -> (1/2)/2 = 1/4
    #   i2: 0A 1B 3A 4B 5A -> R@1 0; AP: A B -> 1/4
    #   i3: 0A 1B 2B 4B 5A -> R@1 1; AP(R=2): A B -> 1/2
    #   i4: 0A 1B 2B 3A 5A -> R@1 0; AP(R=2): A B -> 1/4
    #   i5: 0A 1B 2B 3A 4B -> R@1 1; AP: A B -> 1/2
    # Recall@1 = 2/6; MAP@R = (0 + 1/4 + 1/4 + 1/2 + 1/4 + 1/2)/6 = (7/4)/6 = 7/24.
    # A self hit anywhere would raise these (a query always matches its own class).
    assert m["recall@1"] == pytest.approx(2 / 6)
    assert m["map@r"] == pytest.approx(7 / 24)


def test_map_at_r_skips_queries_without_relevant_items():
    # Singletons have R = 0 and are left out of MAP@R's mean (Musgrave et al.).
    # i0=0 A, i1=1 A, i2=30 C (alone). i0: i1 first -> AP 1; i1: i0 first -> AP 1. MAP@R = 1.
    emb = line([0, 1, 30])
    m = retrieval_metrics(emb, np.array([0, 0, 2]))
    assert m["map@r"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Triplet accuracy
# --------------------------------------------------------------------------------------------

TRI_EMB = np.array([[0, 0], [1, 0], [0, 2], [3, 0], [0, 1]], dtype=np.float32)
TRIPLETS = np.array([
    [0, 1, 2],  # d(a,p) = 1,     d(a,n) = 2         : ok; m=1: 1+1 <= 2 (boundary, counted); m=2: no
    [0, 1, 3],  # d(a,p) = 1,     d(a,n) = 3         : ok; m=1: 2 <= 3 ok;   m=2: 3 <= 3 (boundary) ok
    [0, 2, 4],  # d(a,p) = 2,     d(a,n) = 1         : wrong; never within a margin
    [1, 4, 3],  # d(a,p) = √2,    d(a,n) = 2         : ok; m=1: 2.414 > 2 no
    [3, 1, 4],  # d(a,p) = 2,     d(a,n) = √10=3.162 : ok; m=1: 3 <= 3.162 ok; m=2: 4 > 3.162 no
])


@pytest.mark.parametrize("margin, expected_margin_acc", [(0.0, 4 / 5), (1.0, 3 / 5), (2.0, 1 / 5), (5.0, 0.0)])
def test_triplet_accuracy_by_hand(margin, expected_margin_acc):
    t = triplet_accuracy(TRI_EMB, TRIPLETS, margin)
    assert t["triplet_acc"] == pytest.approx(4 / 5)  # independent of the margin
    assert t["triplet_acc_margin"] == pytest.approx(expected_margin_acc)


def test_triplet_accuracy_tie_is_not_a_success_but_meets_margin_zero():
    # d(a,p) = d(a,n) = 1: strict d(a,p) < d(a,n) fails; d(a,p) + 0 <= d(a,n) holds.
    emb = np.array([[0, 0], [1, 0], [-1, 0]], dtype=np.float32)
    t = triplet_accuracy(emb, np.array([[0, 1, 2]]), 0.0)
    assert t == {"triplet_acc": 0.0, "triplet_acc_margin": 1.0}


# --------------------------------------------------------------------------------------------
# k-NN and linear SVM probes
# --------------------------------------------------------------------------------------------

def test_knn_accuracy_by_hand():
    # Train (1-D): class 3 at 0, 0.1, 0.2 and an outlier at 2.0; class 7 at 1.0, 1.1, 1.2.
    # Test: 0.05 (y=3), 1.15 (y=7), 1.9 (y=7), 0.45 (y=7).
    #   0.05: nearest are 0, 0.1, 0.2 -> class 3 for k = 1, 2, 3: correct.
    #   1.15: nearest are 1.1/1.2, 1.0 -> class 7: correct.
    #   1.9:  2.0 (d .1, class 3), 1.2 (.7, 7), 1.1 (.8, 7):
    #         k=1 -> 3 wrong; k=2 -> 1:1 tie, nearer neighbour's class 3 wins -> wrong; k=3 -> 7 correct.
    #   0.45: 0.2 (.25), 0.1 (.35), 0 (.45), then 1.0 (.55) -> class 3 for k <= 3: wrong.
    # Accuracy: k=1 2/4, k=2 2/4, k=3 3/4.
    train = line([0, 0.1, 0.2, 2.0, 1.0, 1.1, 1.2])
    train_y = np.array([3, 3, 3, 3, 7, 7, 7])
    test = line([0.05, 1.15, 1.9, 0.45])
    test_y = np.array([3, 7, 7, 7])
    assert knn_accuracy(train, train_y, test, test_y, k=1) == pytest.approx(0.5)
    assert knn_accuracy(train, train_y, test, test_y, k=2) == pytest.approx(0.5)
    assert knn_accuracy(train, train_y, test, test_y, k=3) == pytest.approx(0.75)
    # Query batches must line up with their labels.
    assert knn_accuracy(train, train_y, test, test_y, k=3, batch=1) == pytest.approx(0.75)


def test_svm_accuracy_separable_and_confusion_shape():
    # Three well-separated gaussian blobs in 4-D: a linear classifier gets every test point right.
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0, 0, 0], [8, 0, 0, 0], [0, 8, 0, 0]], dtype=np.float32)
    train_y = np.repeat([0, 1, 2], 20)
    test_y = np.repeat([0, 1, 2], [4, 5, 6])
    train = (centers[train_y] + rng.normal(scale=0.5, size=(60, 4))).astype(np.float32)
    test = (centers[test_y] + rng.normal(scale=0.5, size=(15, 4))).astype(np.float32)
    acc, cm = svm_accuracy(train, train_y, test, test_y)
    assert acc == 1.0
    assert cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, np.diag([4, 5, 6]))


def test_svm_confusion_covers_classes_missing_from_test():
    # The confusion matrix is over the union of train and test labels: 3 classes even when the
    # test set holds only two of them; rows are true labels.
    rng = np.random.default_rng(2)
    centers = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    train_y = np.repeat([0, 1, 2], 10)
    test_y = np.array([0, 0, 2])
    train = (centers[train_y] + rng.normal(scale=0.3, size=(30, 2))).astype(np.float32)
    test = centers[test_y] + np.float32(0.1)
    acc, cm = svm_accuracy(train, train_y, test, test_y)
    assert acc == 1.0
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 0, 0], [0, 0, 1]])


# --------------------------------------------------------------------------------------------
# Independent cross-check against pytorch-metric-learning
# --------------------------------------------------------------------------------------------

def test_precision_at_1_and_map_at_r_match_pytorch_metric_learning():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(123)
    labels = np.repeat(np.arange(5), 60)
    rng.shuffle(labels)
    centers = rng.normal(scale=1.2, size=(5, 8))  # overlapping clusters: metrics well below 1
    emb = (centers[labels] + rng.normal(size=(300, 8))).astype(np.float32)
    ours = retrieval_metrics(emb, labels)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    theirs = calc.get_accuracy(emb, labels, emb, labels, ref_includes_query=True)
    # Sanity: the case is not degenerate.
    assert 0.3 < theirs["precision_at_1"] < 0.95
    assert 0.1 < theirs["mean_average_precision_at_r"] < 0.9
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


# --------------------------------------------------------------------------------------------
# The metric registry: a metric registered from here is computed, stored and tabled
# --------------------------------------------------------------------------------------------

def test_a_metric_registered_from_a_test_module_reaches_metrics_json_and_the_table(tmp_path):
    import json

    from typer.testing import CliRunner

    from dmlbench.cli import app
    from dmlbench.evaluation.metrics import METRICS, register_metric

    @register_metric("mean_norm_test", higher_is_better=False, description="mean embedding norm (test only)")
    def mean_norm(ctx):
        e = ctx.test_emb()
        return float(np.linalg.norm(e, axis=1).mean())

    try:
        r = CliRunner().invoke(app, ["run", "--methods", "raw", "--out", str(tmp_path), "--test-triplets", "50"])
        assert r.exit_code == 0, r.stderr
        (run,) = (tmp_path / "digits" / "raw").glob("s0-*")
        m = json.loads((run / "metrics.json").read_text())
        from dmlbench.data import load_dataset

        d = load_dataset("digits")
        x = d.test.images().reshape(len(d.test), -1).astype(np.float64) * d.scale
        assert m["mean_norm_test"] == pytest.approx(np.linalg.norm(x, axis=1).mean(), rel=1e-5)
        t = CliRunner().invoke(app, ["table", str(tmp_path), "--metrics", "recall@1,mean_norm_test"])
        assert t.exit_code == 0 and "mean_norm_test" in t.stdout
        listed = CliRunner().invoke(app, ["list", "metrics"]).stdout
        assert "mean_norm_test" in listed and "(lower is better) mean embedding norm" in listed
    finally:
        METRICS.remove("mean_norm_test")


def test_classification_probes_do_not_apply_to_a_class_disjoint_split(tmp_path):
    import json

    from typer.testing import CliRunner

    from dmlbench.cli import app

    r = CliRunner().invoke(app, ["run", "--methods", "raw", "--split", "classes", "--out", str(tmp_path),
                                 "--test-triplets", "50"])
    assert r.exit_code == 0, r.stderr
    (run,) = (tmp_path / "digits" / "raw").glob("s0-*")
    m = json.loads((run / "metrics.json").read_text())
    assert "knn_acc" not in m and "svm_acc" not in m and "map@r" in m
    pq = np.load(run / "per_query.npz")
    assert len(pq["retrieval_map@r"]) == json.loads((run / "config.json").read_text())["data"]["test"]

# Regression: k larger than the training set


def test_knn_k_larger_than_train_set():
    from dmlbench.evaluation.neighbors import knn_classify

    train = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)
    acc, correct = knn_classify(train, np.array([0, 0, 1]), np.array([[0.5]], dtype=np.float32), np.array([0]), k=50)
    assert acc == 1.0 and correct.tolist() == [True]


def test_embedding_passes_take_fewer_images_as_they_grow():
    # A convolution's activations grow with the pixels: photos at 64 x 64 go 98 to a pass where
    # 28 x 28 digits go 512, so evaluating a photo suite holds no more activations than MNIST.
    from dmlbench.evaluation.evaluate import embed_block

    assert embed_block("cpu", (1, 28, 28)) == embed_block("cpu") == 512
    assert embed_block("cpu", (1, 8, 8)) == 512
    assert embed_block("cpu", (3, 64, 64)) == 512 * 784 // 4096 == 98
    assert embed_block("cpu", (3, 224, 224)) == 16
