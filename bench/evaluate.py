"""One evaluation suite for every method. It only calls ``method.embed`` (plus, for generative
methods, their reconstruction metrics).

Retrieval uses faiss exact L2 search (IndexFlatL2) in query batches; each query is removed from its
own neighbour list by index. The linear SVM is a hinge-loss linear classifier (SGD-fitted) on standardised embeddings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from dmlbench.config import RunConfig
from dmlbench.data import Data
from dmlbench.methods.base import Method

RECALL_KS = (1, 2, 4, 8)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    description: str
    higher_is_better: bool = True


METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("triplet_acc", "fixed test triplets with d(a,p) < d(a,n)"),
    MetricInfo("triplet_acc_margin", "fixed test triplets with zero hinge loss: d(a,p) + m <= d(a,n) (TVAE paper)"),
    *[MetricInfo(f"recall@{k}", f"Recall@{k}: a same-class item among the {k} nearest test neighbours (faiss L2)")
      for k in RECALL_KS],
    MetricInfo("precision@1", "precision of the nearest test neighbour (faiss L2)"),
    MetricInfo("map@r", "MAP@R (Musgrave et al. 2020) within the test set"),
    MetricInfo("knn_acc", "k-NN classification of test queries against train embeddings (majority of k)"),
    MetricInfo("svm_acc", "linear SVM trained on train embeddings, accuracy on test"),
    MetricInfo("recon_error", "generative only: squared L2 reconstruction error per test image, from z = mu", False),
    MetricInfo("elbo", "generative only: 1-sample ELBO per test image (nats; L2 as Gaussian up to constants)"),
]}


@torch.inference_mode()
def embed(method: Method, x: torch.Tensor, device: torch.device | str = "cpu", batch_size: int = 4096) -> np.ndarray:
    method.eval()
    out = [method.embed(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def _index(reference: np.ndarray) -> faiss.IndexFlatL2:
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    return index


def _drop_self(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own index from its neighbour row (wherever it sits), keep k columns."""
    keep = ids != query_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")  # kept neighbours first, in rank order
    return np.take_along_axis(ids, order, axis=1)[:, :k]


def retrieval_metrics(emb: np.ndarray, labels: np.ndarray, batch: int = 2048) -> dict[str, float]:
    """Recall@K, precision@1 and MAP@R within one set, each item a query against all the others."""
    labels = np.asarray(labels)
    n = len(emb)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r_all = counts[inv] - 1  # relevant items per query, itself excluded
    k = int(min(max(r_all.max(), max(RECALL_KS)), n - 1))
    index = _index(emb)
    hits = {kk: 0.0 for kk in RECALL_KS}
    ap_sum, ap_n = 0.0, 0
    for s in range(0, n, batch):
        q = np.arange(s, min(s + batch, n))
        _, ids = index.search(np.ascontiguousarray(emb[q]), k + 1)
        ids = _drop_self(ids, q, k)
        rel = labels[ids] == labels[q][:, None]
        r = r_all[q]
        valid = r > 0  # a query with no other item of its class has nothing to retrieve (as in PML)
        for kk in RECALL_KS:
            hits[kk] += rel[valid, :kk].any(1).sum()
        ranks = np.arange(1, k + 1)
        rel_r = rel & (ranks[None, :] <= r[:, None])
        prec = np.cumsum(rel_r, axis=1) / ranks[None, :]
        ap = (prec * rel_r).sum(1)[valid] / r[valid]
        ap_sum += ap.sum()
        ap_n += valid.sum()
    out = {f"recall@{kk}": hits[kk] / max(ap_n, 1) for kk in RECALL_KS}
    out["precision@1"] = out["recall@1"]
    out["map@r"] = ap_sum / max(ap_n, 1)
    return {k_: float(v) for k_, v in out.items()}


def triplet_accuracy(emb: np.ndarray, triplets: np.ndarray, margin: float) -> dict[str, float]:
    a, p, n = (emb[triplets[:, i]] for i in range(3))
    d_ap = np.linalg.norm(a - p, axis=1)
    d_an = np.linalg.norm(a - n, axis=1)
    return {"triplet_acc": float(np.mean(d_ap < d_an)),
            "triplet_acc_margin": float(np.mean(d_ap - d_an + margin <= 0))}


def knn_accuracy(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray,
                 k: int, batch: int = 4096) -> float:
    classes, train_c = np.unique(train_y, return_inverse=True)
    k = min(k, len(train_emb))  # faiss pads missing neighbours with id -1
    index = _index(train_emb)
    # Majority vote; ties go to the class with the nearer neighbours (a tiny rank bonus).
    bonus = 1.0 + 1e-3 * (k - np.arange(k)) / k
    correct = 0
    for s in range(0, len(test_emb), batch):
        _, ids = index.search(np.ascontiguousarray(test_emb[s:s + batch]), k)
        votes = np.zeros((len(ids), len(classes)))
        np.add.at(votes, (np.arange(len(ids))[:, None], train_c[ids]), bonus[None, :])
        correct += (classes[votes.argmax(1)] == test_y[s:s + batch]).sum()
    return float(correct / len(test_emb))


def svm_accuracy(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray,
                 test_y: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    """A linear SVM (hinge loss + L2 penalty, one-vs-rest) on standardised embeddings.

    It is fitted by averaged SGD (scikit-learn's SGDClassifier) rather than liblinear's LinearSVC:
    the same model, but seconds instead of minutes on 60k x 784 raw pixels.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), SGDClassifier(loss="hinge", alpha=1e-4, average=True, max_iter=20,
                                                        tol=1e-4, random_state=seed,
                                                        n_jobs=torch.get_num_threads()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(train_emb, train_y)
    pred = clf.predict(test_emb)
    labels = np.unique(np.concatenate([train_y, test_y]))
    return float(np.mean(pred == test_y)), confusion_matrix(test_y, pred, labels=labels)


@torch.inference_mode()
def generative_metrics(method: Method, x: torch.Tensor, device, batch_size: int = 2048) -> dict[str, float]:
    method.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(x), batch_size):
        for k, v in method.generative_metrics(x[i:i + batch_size].to(device)).items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(x) for k, v in sums.items()}


@dataclass
class Evaluation:
    metrics: dict[str, float]
    train_emb: np.ndarray
    test_emb: np.ndarray
    confusion: np.ndarray | None


def evaluate(method: Method, data: Data, cfg: RunConfig, triplets: np.ndarray, device="cpu") -> Evaluation:
    test_emb = embed(method, data.x_test, device)
    train_emb = embed(method, data.x_train, device)
    test_y, train_y = data.y_test.numpy(), data.y_train.numpy()
    metrics = {**triplet_accuracy(test_emb, triplets, cfg.eval_margin), **retrieval_metrics(test_emb, test_y)}
    confusion = None
    # Classification probes need the test classes in train; the class-disjoint split has none.
    if data.split != "classes":
        metrics["knn_acc"] = knn_accuracy(train_emb, train_y, test_emb, test_y, cfg.knn_k)
        metrics["svm_acc"], confusion = svm_accuracy(train_emb, train_y, test_emb, test_y)
    if getattr(method, "generative", False):
        metrics.update(generative_metrics(method, data.x_test, device))
    metrics["embedding_dim"] = int(test_emb.shape[1])
    return Evaluation(metrics, train_emb, test_emb, confusion)
