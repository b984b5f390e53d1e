"""The linear-SVM probe ("SVM accuracy" of the evaluation suite).

Hoffer & Ailon report a linear SVM trained on the embeddings. Ours is an L2-regularised,
squared-hinge, one-vs-rest linear SVM in liblinear's primal formulation with a penalised bias: for
every class c (one classifier in all for two classes) it minimises
``0.5 * (||w_c||^2 + b_c^2) + C * sum_i max(0, 1 - y_ic * (w_c . x_i + b_c))^2`` with
``y_ic = +1`` for class c and ``-1`` otherwise (liblinear's ``intercept_scaling=1``), and predicts
the class with the largest score. This is one-vs-rest squared hinge, not the multi-class
(Crammer-Singer style) SVM of Hoffer & Ailon, so absolute numbers are not directly comparable to
theirs. Features are centred with the training mean and divided by one global scale, the RMS norm of
the centred training rows (not per-feature standardisation, which makes raw pixels ill-conditioned).
The regularisation is a per-sample lambda with ``C = 1 / (lambda * n)``, chosen by 3-fold stratified
cross-validation on at most ``cv_rows`` training rows (a seeded stratified subsample) from a grid of
powers of ten, ties going to the larger lambda; the test set is never used for the choice. Where the
best lambda is the grid's smallest or largest and beats its neighbour, the grid widens by a decade
on that side (:func:`widen`, at most ``MAX_WIDEN`` times a side), so the choice is interior; one
still on the edge is reported (``ProbeResult.lam_edge``), and the results table flags it. For at most 256
features scikit-learn's ``LinearSVC(dual=False)`` (liblinear) solves it; above that, the same
objective is minimised with L-BFGS in torch (imported only then), which is far faster on raw pixels.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

log = logging.getLogger("dmlbench")

LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2)
# Decades the grid may grow on each side when the best lambda lies on its edge: 1e-8 to 10.
MAX_WIDEN = 3
LIBLINEAR_MAX_DIM = 256
# Below this many values (rows x features) liblinear is fast whatever the width; L-BFGS would pay a
# (d+1)^2 preconditioner for a few rows of wide features (150 CIFAR images of 3,072 pixels).
LIBLINEAR_MAX_VALUES = 1_000_000
SOLVERS = ("auto", "liblinear", "lbfgs")
SMALL_LBFGS = 4_000_000          # rows x (features + 1) below which L-BFGS runs on one thread
PREDICT_BLOCK = 8192             # test rows scaled and scored at a time
LIBLINEAR_POOL_BYTES = 1 << 30   # liblinear input copies held at once by the probe's threads


@dataclass
class ProbeResult:
    """A probe's test accuracy and confusion, the lambda chosen, the CV accuracy of each lambda, and the solver."""

    accuracy: float
    correct: np.ndarray             # bool per test row
    confusion: np.ndarray           # rows: true, columns: predicted, over ``labels``
    lam: float
    cv_accuracy: dict[float, float]
    solver: str
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))   # order of the confusion axes
    lam_edge: bool = False          # the chosen lambda is still the best on the widened grid's edge


@dataclass
class LinearModel:
    """One-vs-rest linear scores ``x @ coef.T + intercept``; a single column for two classes."""

    coef: np.ndarray                # (m, d)
    intercept: np.ndarray           # (m,)
    classes: np.ndarray             # the labels, sorted

    def decision(self, x: np.ndarray) -> np.ndarray:
        """The scores (n, m) of rows ``x``, in float64."""
        return np.asarray(x, np.float64) @ self.coef.T.astype(np.float64) + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The predicted label of each row: the top score's class (the score's sign for two classes)."""
        if len(self.classes) == 1:
            return np.repeat(self.classes, len(x))
        s = self.decision(x)
        if len(self.classes) == 2:
            return self.classes[(s[:, 0] > 0).astype(int)]
        return self.classes[np.argmax(s, axis=1)]


class Scaler:
    """Centre with the training mean, divide by one global scale: the RMS norm of centred rows."""

    def __init__(self, x: np.ndarray):
        x = np.asarray(x)
        self.mean = x.mean(0, dtype=np.float64)
        # In row blocks: a float64 copy of 40,000 pooled photos (1,024 values each) is 0.3 GB.
        ss = sum(float(np.sum((x[i:i + PREDICT_BLOCK] - self.mean) ** 2)) for i in range(0, len(x), PREDICT_BLOCK))
        rms = float(np.sqrt(ss / len(x))) if len(x) else 0.0
        self.scale = rms if rms > 0 else 1.0

    def __call__(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        # One output array in the target dtype, computed in place (no float64 temporaries for float32).
        out = np.subtract(np.asarray(x), self.mean.astype(dtype), dtype=dtype)
        out /= dtype(self.scale)
        return out


def _targets(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(n, m) of +-1: one column per class, or one column (positive = classes[1]) for two."""
    codes = np.searchsorted(classes, y)
    if len(classes) == 2:
        return np.where(codes == 1, 1.0, -1.0)[:, None]
    t = -np.ones((len(y), len(classes)))
    t[np.arange(len(y)), codes] = 1.0
    return t


def svm_objective(model: LinearModel, x: np.ndarray, y: np.ndarray, C: float) -> float:
    """The primal objective: sum over classifiers of 0.5 ||(w, b)||^2 + C * sum of squared hinges."""
    t = _targets(np.asarray(y), model.classes)
    viol = np.maximum(0.0, 1.0 - t * model.decision(x))
    reg = 0.5 * (np.sum(model.coef.astype(np.float64) ** 2) + np.sum(model.intercept ** 2))
    return float(reg + C * np.sum(viol ** 2))


def _pool_size(jobs: int | None, tasks: int, rows: int, dim: int) -> int:
    """Threads for ``tasks`` liblinear fits: at most ``jobs``, and no more copies of the data at once
    than LIBLINEAR_POOL_BYTES holds (liblinear copies its input, 16 bytes a value)."""
    per_fit = 16 * max(rows, 1) * (dim + 1)
    return int(max(1, min(jobs or 1, tasks, LIBLINEAR_POOL_BYTES // per_fit)))


def _fit_liblinear(x, y, classes, C, seed, jobs: int | None = 1) -> LinearModel:
    """liblinear's one-vs-rest fit: one binary problem per class (a single one for two classes).
    The problems are independent, so they are fitted separately, on ``jobs`` threads (liblinear
    releases the GIL). They are the problems liblinear's own multi-class loop solves, to the same
    optimum within its tolerance (it sums the rows in another order: coefficients differ by about
    1e-8); the result does not depend on ``jobs``. ConvergenceWarnings are the
    caller's to silence (``warnings`` filters are not thread-safe); non-convergence is logged."""
    from sklearn.svm import LinearSVC

    max_iter = 1000

    def fit(target):
        svc = LinearSVC(penalty="l2", loss="squared_hinge", dual=False, C=C, fit_intercept=True,
                        intercept_scaling=1.0, tol=1e-4, max_iter=max_iter, random_state=seed).fit(x, target)
        if np.max(svc.n_iter_) >= max_iter:
            log.warning("linear probe: liblinear did not converge (C=%g)", C)
        return svc

    if len(classes) == 2:
        svc = fit(y)
        assert np.array_equal(svc.classes_, classes)
        return LinearModel(svc.coef_.astype(np.float64), svc.intercept_.astype(np.float64), classes)
    pool = _pool_size(jobs, len(classes), *x.shape)
    one = lambda c: fit(np.where(y == c, 1, -1))  # noqa: E731 (positive = class c: coef_ row 0)
    if pool > 1:
        with ThreadPoolExecutor(pool) as ex:
            fits = list(ex.map(one, classes))
    else:
        fits = [one(c) for c in classes]
    return LinearModel(np.stack([f.coef_[0] for f in fits]).astype(np.float64),
                       np.array([f.intercept_[0] for f in fits], np.float64), classes)


def _fit_lbfgs(x, y, classes, C, *, max_iter: int = 3000, gtol: float = 1e-6, precondition_rows: int = 10000,
               alpha: float = 1.0, device: str = "cpu") -> LinearModel:
    """Minimise the same objective with torch's L-BFGS.

    Internally the objective is divided by ``C * n`` (same minimiser, gradients of order one):
    ``lambda/2 ||W||^2 + 1/n sum_i sum_c max(0, 1 - y_ic (w_c . x_i + b_c))^2`` with
    ``lambda = 1/(C n)``, W holding the bias as its last row. L-BFGS runs on ``V`` with ``W = M V``,
    ``M = U diag(1 / sqrt(lambda + alpha * s))`` from the eigendecomposition ``U diag(s) U^T`` of the
    feature second-moment matrix (estimated on at most ``precondition_rows`` evenly spaced rows):
    the objective and its minimiser are unchanged, but the problem becomes well conditioned (on
    MNIST pixels, 3-4x fewer passes over the data at lambda <= 1e-4). Passes over the data are float32 (the
    bandwidth-bound part); parameters, objective and the small products are float64. It stops when
    the largest gradient entry falls below ``gtol`` times its value at ``V = 0``, or when the
    (order-one) objective changes by less than 1e-10 (it reaches the float32 noise floor there).
    On a GPU ``device`` the same iterations run there (the run's device: the raw floor's 784-d
    probe is the slowest part of an MNIST evaluation on the CPU).
    """
    import torch

    n, d = x.shape
    dev = torch.device(device)
    # The features are used in place (no copy with a bias column, no transposed copy): on wide
    # features (a pooled photo's 1,024 values x 50,000 images) each copy is another 200 MB.
    X = torch.as_tensor(np.asarray(x, np.float32)).to(dev)
    T = torch.as_tensor(_targets(y, classes), dtype=torch.float64, device=dev)
    lam = 1.0 / (C * n)

    step = max(1, -(-n // precondition_rows))
    sub = X[::step]
    sub = torch.cat([sub, torch.ones(len(sub), 1, device=dev)], 1).double()
    s, U = torch.linalg.eigh(sub.T @ sub / len(sub))
    M = U * torch.rsqrt(lam + alpha * s.clamp(min=0))[None, :]

    def value_and_grad(v):
        w = M @ v
        wf = w.float()
        viol = (1.0 - T * torch.addmm(wf[d], X, wf[:d]).double()).clamp_(min=0)
        f = 0.5 * lam * (w * w).sum() + (viol * viol).sum() / n
        r = (T * viol).float()
        # (r^T X)^T, not X^T r: the same product, but BLAS reads the tall X row-major (4x faster
        # on the CPU for 60,000 x 785 pixels; it is the bandwidth-bound half of every pass).
        g = torch.cat([(r.T @ X).T, r.sum(0, keepdim=True)], 0)
        gw = lam * w - (2.0 / n) * g.double()
        return f, M.T @ gw

    V = torch.zeros(d + 1, T.shape[1], dtype=torch.float64, device=dev, requires_grad=True)
    with torch.no_grad():
        g0 = value_and_grad(V)[1].abs().max().item()
    opt = torch.optim.LBFGS([V], lr=1, max_iter=max_iter, max_eval=int(max_iter * 1.25), history_size=20,
                            tolerance_grad=max(gtol * g0, 1e-14), tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure():
        with torch.no_grad():
            f, g = value_and_grad(V)
        V.grad = g
        return f

    # Small problems run single-threaded: their matrix products are too small to split, and OpenMP
    # threads that spin-wait make them many times slower on a busy machine.
    before = torch.get_num_threads()
    if dev.type == "cpu" and n * (d + 1) < SMALL_LBFGS and before > 1:
        torch.set_num_threads(1)
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(before)
    if opt.state[V].get("n_iter", 0) >= max_iter:
        log.warning("linear probe: L-BFGS stopped at max_iter=%d (C=%g)", max_iter, C)
    with torch.no_grad():
        w = (M @ V).cpu().numpy()
    return LinearModel(w[:d].T.copy(), w[d].copy(), classes)


def fit_svm(x: np.ndarray, y: np.ndarray, C: float, solver: str = "auto", *, seed: int = 0,
            device: str = "cpu", jobs: int | None = 1) -> LinearModel:
    """Fit the one-vs-rest squared-hinge SVM on (already scaled) features; ``solver`` is ``"auto"``
    (liblinear up to 256 features or 1M values, L-BFGS above), ``"liblinear"`` or ``"lbfgs"``
    (on ``device``; liblinear runs on the CPU, its per-class problems on ``jobs`` threads)."""
    solver = _solver(solver, x.shape[1], x.shape[0])
    classes = np.unique(y)
    if len(classes) == 1:
        return LinearModel(np.zeros((1, x.shape[1])), np.zeros(1), classes)
    if solver == "liblinear":
        return _fit_liblinear(x, y, classes, C, seed, jobs)
    return _fit_lbfgs(x, y, classes, C, device=device)


def _solver(solver: str, dim: int, rows: int = 0) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "auto":
        return "liblinear" if dim <= LIBLINEAR_MAX_DIM or rows * dim <= LIBLINEAR_MAX_VALUES else "lbfgs"
    return solver


def _fit_scaled(train_x, train_y, lam, solver, seed, device="cpu", jobs=1) -> tuple[Scaler, LinearModel]:
    scaler = Scaler(train_x)
    C = 1.0 / (lam * len(train_x))
    dtype = np.float32 if solver == "lbfgs" else np.float64
    return scaler, fit_svm(scaler(train_x, dtype), train_y, C, solver, seed=seed, device=device, jobs=jobs)


@contextmanager
def _quiet():
    """Silence scikit-learn's per-fit warnings (non-convergence is logged from ``n_iter_``). Entered
    only by the calling thread: ``warnings.catch_warnings`` is not thread-safe."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        yield


def _cv_subsample(y: np.ndarray, rows: int, seed: int) -> np.ndarray:
    if len(y) <= rows:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        keep, _ = train_test_split(idx, train_size=rows, stratify=y, random_state=seed)
    except ValueError:          # a class with a single row cannot be stratified
        keep = np.random.default_rng(seed).choice(idx, rows, replace=False)
    return np.sort(keep)


def cross_validate(x: np.ndarray, y: np.ndarray, lambdas: Sequence[float], *, solver: str = "auto", seed: int = 0,
                   cv_rows: int = 5000, folds: int = 3, device: str = "cpu", jobs: int | None = 1) -> dict[float, float]:
    """Pooled accuracy of stratified ``folds``-fold CV for every lambda, on at most ``cv_rows`` rows.
    Each fold's scaling and C come from its own training part. The (lambda, fold) fits are
    independent and run on ``jobs`` threads (liblinear's, and L-BFGS's when they are small enough to
    run single-threaded); the result does not depend on ``jobs``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    keep = _cv_subsample(y, cv_rows, seed)
    x, y = x[keep], y[keep]
    _, counts = np.unique(y, return_counts=True)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.max() >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    splits = list(splitter.split(x, y)) if len(y) >= folds else []
    tasks = [(lam, tr, va) for lam in lambdas for tr, va in splits]

    def right(task) -> int:
        lam, tr, va = task
        scaler, model = _fit_scaled(x[tr], y[tr], lam, solver, seed, device)
        return int(np.sum(model.predict(scaler(x[va])) == y[va]))

    used = _solver(solver, x.shape[1], len(y))
    if used == "liblinear":
        pool = _pool_size(jobs, len(tasks), len(y), x.shape[1])
    else:
        # Small L-BFGS fits run single-threaded anyway (SMALL_LBFGS): run ``jobs`` of them at once,
        # each on one torch thread, as a sequential run would (the result does not depend on jobs).
        # On raw MNIST pixels the 12 CV fits were 22 of the raw floor's 47 s of evaluation.
        rows = len(y) - min((len(va) for _, _, va in tasks), default=0)
        small = str(device) == "cpu" and rows * (x.shape[1] + 1) < SMALL_LBFGS
        pool = int(max(1, min(jobs or 1, len(tasks)))) if small else 1
    with _quiet(), _threads(1 if pool > 1 and used == "lbfgs" else None, torch_too=True):
        if pool > 1:
            with ThreadPoolExecutor(pool) as ex:
                counts = list(ex.map(right, tasks))
        else:
            counts = [right(t) for t in tasks]
    out = {}
    for lam in lambdas:
        hits = [c for (l2, _, _), c in zip(tasks, counts) if l2 == lam]
        total = sum(len(va) for l2, _, va in tasks if l2 == lam)
        out[float(lam)] = sum(hits) / total if total else float("nan")
    return out


def choose_lambda(cv_accuracy: dict[float, float]) -> float:
    """The lambda of best CV accuracy; ties (and NaNs) go to the larger lambda."""
    best, best_acc = None, -np.inf
    for lam in sorted(cv_accuracy, reverse=True):
        acc = cv_accuracy[lam]
        if best is None or (not np.isnan(acc) and acc > best_acc):
            best, best_acc = lam, (acc if not np.isnan(acc) else -np.inf)
    return float(best)


def edge_side(cv_accuracy: dict[float, float], lam: float) -> int:
    """-1 or +1 where ``lam`` is the grid's smallest or largest lambda and does strictly better than
    its neighbour (the accuracy still rises towards the edge), else 0. A plateau that reaches the
    edge is no edge: its interior lambdas do as well."""
    grid = sorted(cv_accuracy)
    if len(grid) < 2 or lam not in (grid[0], grid[-1]):
        return 0
    inner = grid[1] if lam == grid[0] else grid[-2]
    better = not np.isnan(cv_accuracy[lam]) and (np.isnan(cv_accuracy[inner]) or cv_accuracy[lam] > cv_accuracy[inner])
    return (-1 if lam == grid[0] else 1) if better else 0


def widen(cv_accuracy: dict[float, float], score, max_widen: int = MAX_WIDEN) -> tuple[float, bool]:
    """The chosen lambda after widening the grid a decade at a time towards an edge that wins
    (``score(lams) -> {lam: accuracy}`` cross-validates new ones into ``cv_accuracy``), and whether it
    is still on the edge after ``max_widen`` decades on that side."""
    grown = {-1: 0, 1: 0}
    while True:
        lam = choose_lambda(cv_accuracy)
        side = edge_side(cv_accuracy, lam)
        if side == 0:
            return lam, False
        if grown[side] >= max_widen:
            return lam, True
        grown[side] += 1
        cv_accuracy.update(score([float(f"{lam * 10.0 ** side:.0e}")]))


@contextmanager
def _threads(n: int | None, torch_too: bool):
    if not n:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = None
    if torch_too:
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, seed: int = 0,
                 threads: int | None = None, lambdas: Sequence[float] = LAMBDAS, cv_rows: int = 5000,
                 solver: str = "auto", device: str = "cpu", max_widen: int = MAX_WIDEN) -> ProbeResult:
    """Train the probe on (train_x, train_y), choosing lambda by CV on training rows only, and test it.

    ``threads`` limits BLAS (and torch, for L-BFGS) threads while it runs, and is how many of
    liblinear's independent fits (CV folds, classes) run at once; the result does not depend on it. ``device`` is where the
    L-BFGS solver runs (the run's device); liblinear always runs on the CPU. With a single lambda
    the CV is skipped (``cv_accuracy`` is then empty).
    """
    from sklearn.metrics import confusion_matrix

    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y, test_y = np.asarray(train_y).reshape(-1), np.asarray(test_y).reshape(-1)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x {train_x.shape} and test_x {test_x.shape} must be 2-D with equal widths")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels differ in length")
    if len(train_x) == 0:
        raise ValueError("linear_probe needs training rows")
    if not lambdas:
        raise ValueError("lambdas is empty")
    used = _solver(solver, train_x.shape[1], len(train_x))
    jobs = threads or 1
    with _threads(threads, used == "lbfgs"), _quiet():
        edge = False
        if len(lambdas) > 1:
            def score(lams):
                return cross_validate(train_x, train_y, lams, solver=used, seed=seed, cv_rows=cv_rows, device=device,
                                      jobs=jobs)

            cv = score(lambdas)
            lam, edge = widen(cv, score, max_widen)
        else:
            cv, lam = {}, float(lambdas[0])
        scaler, model = _fit_scaled(train_x, train_y, lam, used, seed, device, jobs)
        # In blocks: a scaled float64 copy of 60,000 test rows of 1,024 values would be 0.5 GB.
        pred = np.concatenate([model.predict(scaler(test_x[i:i + PREDICT_BLOCK]))
                               for i in range(0, len(test_x), PREDICT_BLOCK)] or [np.zeros(0, train_y.dtype)])
    correct = pred == test_y
    labels = np.unique(np.concatenate([train_y, test_y]))
    return ProbeResult(accuracy=float(correct.mean()) if len(correct) else float("nan"), correct=correct,
                       confusion=confusion_matrix(test_y, pred, labels=labels), lam=lam, cv_accuracy=cv,
                       solver=used, labels=labels, lam_edge=edge)
