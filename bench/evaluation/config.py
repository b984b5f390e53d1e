"""What the evaluation reads: a small config, apart from the run's whole ``RunConfig``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation settings of one run (imports no torch).

    ``margin``: the hinge margin of ``triplet_acc_margin``; ``knn_k``: the k of the k-NN probe;
    ``seed``: the seed of the linear probe's cross-validation subsample; ``augment``: the
    training augmentation, whose evaluation transform (a centre crop for ``mlrc``) the test
    images get.
    """

    margin: float = 1.0
    knn_k: int = 5
    seed: int = 0
    augment: str = "none"
