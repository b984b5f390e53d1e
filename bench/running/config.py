"""The run configuration: one dataclass, its validation, its resolution and its stable run id.

Every field that a user may set carries its help text in ``metadata``; the CLI builds its run
options from these fields (:mod:`dmlbench.cli_options`), so a new field cannot be forgotten there
and each default is written once, here. ``None`` means "the dataset's default" (from its
:class:`~dmlbench.data.DatasetSpec`) or "derived": a value the user types, 0 included, is checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Literal

from dmlbench.core.errors import DMLBenchError
from dmlbench.data.base import DATASETS, DatasetRef
from dmlbench.evaluation.config import EvalConfig
from dmlbench.training.config import TrainConfig

# Fields that do not change the numbers a run produces: left out of the run id, so a run can be
# resumed with another data folder or thread count. The device is not one of them: it is checked
# through the run's provenance (dmlbench.running.provenance), which also covers the code version.
# nproc_per_run is: N processes train as one does (the same batches, noise and gradients; only the
# order of float sums differs, which Adam can amplify, measured in docs/distributed.md), as other
# thread counts do, so a run made with 1 process is complete for 2, and one killed under 2 may
# resume under 1; config.json records the world, and a table mixing world sizes says so.
NOT_IN_ID = ("device", "data_dir", "threads", "tuned", "log", "nproc_per_run")
MAX_NPROC = 1024
MAX_SEED = 2**32 - 1  # numpy's seed range; torch takes more, but every seed must reach both
MAX_EMBEDDING_DIM = 65_536
MAX_BATCH = 1 << 20


def opt(default, help: str, *, cli: bool = True, **kw):
    """A config field with its CLI help. ``cli=False``: set by the harness, not a flag."""
    meta = {"help": help, "cli": cli}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class RunConfig:
    """Everything that defines one (dataset, method, seed) run."""

    dataset: str = opt("digits", "Dataset name; folder:PATH or npz:FILE for your own data (bench list datasets).")
    method: str = opt("", "The method (set by --methods).", cli=False)
    seed: int = opt(0, "The seed (set by --seeds).", cli=False)
    steps: int | None = opt(None, "Optimiser steps, the same for every method. [default: epochs x steps per epoch]")
    epochs: int | None = opt(None, "Passes of epoch-size images, a convenience that sets --steps. [default: per dataset]")
    batch_size: int = opt(128, "Images per step, the same for every method (pairs and triplets included).")
    epoch_size: int | None = opt(None, "Images per epoch: an epoch is epoch-size // batch-size steps, and a checkpoint. [default: the training set]")
    lr: float = opt(1e-3, "Learning rate (of the embedder and the loss, and of the trunk unless --trunk-lr).")
    trunk_lr: float | None = opt(None, "Learning rate of a pretrained trunk. [default: --lr]")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = opt("adam", "adam, adamw, sgd or rmsprop.")
    momentum: float = opt(0.9, "Momentum of sgd and rmsprop.")
    weight_decay: float = opt(0.0, "Weight decay.")
    lr_schedule: Literal["constant", "cosine"] = opt("constant", "constant, or cosine (annealed to 0 over the steps, per step).")
    encoder: str | None = opt(None, "mlp, convnet, cifar, timm:NAME, or a registered one (bench list encoders). [default: per dataset]")
    embedder: Literal["linear", "mlp"] = opt("linear", "Head from a timm trunk's pooled features to the embedding: linear or mlp.")
    embedding_dim: int | None = opt(None, "Embedding (latent) size. [default: per dataset]")
    pretrained: bool = opt(False, "Load the timm trunk's ImageNet weights (Hugging Face cache, or --weights).")
    weights: str = opt("", "A local weights file (.safetensors, .pth) for the timm trunk; implies --pretrained.")
    freeze_bn: bool = opt(False, "Hold the trunk's BatchNorm statistics and affine parameters fixed (MLRC).")
    augment: Literal["none", "flip", "mlrc"] | None = opt(None, "Training augmentation: none, flip, or mlrc (random resized crop + flip). [default: per dataset]")
    image_size: int | None = opt(None, "Side of the images the encoder sees after cropping. [default: the trunk's input size, else the data's]")
    split: Literal["standard", "classes"] = opt("standard", "standard, or classes (train on the first half of the classes, test on the rest).")
    normalize: Literal["unit", "standard"] = opt("unit", "unit (pixels in [0, 1]) or standard (train mean/std).")
    data_seed: int = opt(0, "Seed of the train/test split where the dataset has none.")
    data_options: dict = opt({}, "Loader options (set by --set data.KEY=VALUE).", cli=False)
    method_params: dict = opt({}, "The method's parameters (set by --set METHOD.KEY=VALUE).", cli=False)
    test_triplets: int = opt(10_000, "Fixed test triplets for triplet accuracy.")
    triplet_seed: int = opt(0, "Seed of the fixed test triplets.")
    eval_margin: float = opt(1.0, "Margin m of triplet_acc_margin.")
    knn_k: int = opt(5, "k of the k-NN classification probe.")
    deterministic: bool = opt(True, "Deterministic CUDA kernels (cuDNN, cuBLAS); --no-deterministic trades that for speed.")
    device: str = opt("cpu", "cpu, cuda or cuda:N.")
    nproc_per_run: int = opt(1, "Processes per run, one torch.distributed world (gloo on CPU, NCCL with a GPU each; "
                                "with --device cuda, rank r takes cuda:r): data-parallel training of the same global "
                                "batch, and evaluation in shards (docs/distributed.md).")
    data_dir: str = opt("", "Folder with the dataset files. [default: $DMLBENCH_DATA_DIR, else ~/.cache/dmlbench]")
    threads: int | None = opt(None, "Threads for torch, faiss and BLAS (split between workers). [default: all cores, at most 8]")
    log: str = opt("", "Log curves, metrics and embeddings besides history.csv: tensorboard, mlflow, or both "
                       "(comma-separated); pip install 'dmlbench[tensorboard]' / 'dmlbench[mlflow]'.")
    tuned: dict = opt({}, "Where tuned settings came from (study, trial, params).", cli=False)

    # ----------------------------------------------------------------------------- resolution

    def dataset_name(self) -> str:
        """The registered dataset behind ``dataset`` (``folder`` for ``folder:PATH``)."""
        return DatasetRef.parse(self.dataset).name

    def resolved(self) -> RunConfig:
        """Dataset defaults filled in for encoder, embedding size, augmentation and epochs."""
        d = DATASETS.get(self.dataset_name()).defaults
        epochs = self.epochs if (self.epochs is not None or self.steps is not None) else d["epochs"]
        return dataclasses.replace(
            self, epochs=epochs,
            encoder=self.encoder if self.encoder is not None else d["encoder"],
            embedding_dim=self.embedding_dim if self.embedding_dim is not None else d["embedding_dim"],
            augment=self.augment if self.augment is not None else d["augment"],
            pretrained=self.pretrained or bool(self.weights),
        )

    def steps_per_epoch(self) -> int:
        """Steps between checkpoints (``epoch_size`` must be known: see :meth:`with_budget`)."""
        return max(1, int(self.epoch_size) // self.batch_size)

    def with_budget(self, n_train: int) -> RunConfig:
        """The step budget fixed: ``steps`` from epochs where not given, ``epoch_size`` from the data.

        Every method gets the same number of optimiser steps, whatever its batch kind rounds the
        batch to; ``epochs`` is then dropped, so that 4 epochs and the same number of steps are
        one run id.
        """
        cfg = dataclasses.replace(self, epoch_size=self.epoch_size or n_train)
        steps = self.steps if self.steps is not None else (self.epochs or 0) * cfg.steps_per_epoch()
        return dataclasses.replace(cfg, steps=steps, epochs=None)

    def check(self) -> None:
        """Validate user-set values, each with a one-line message naming the field."""
        def bad(name: str, why: str):
            raise DMLBenchError(f"{name}={getattr(self, name)!r} {why}")

        if self.steps is not None and self.epochs is not None:
            raise DMLBenchError("give steps or epochs, not both")
        for name, hi in (("steps", 10**9), ("epochs", 10**6), ("batch_size", MAX_BATCH), ("epoch_size", 10**10),
                         ("embedding_dim", MAX_EMBEDDING_DIM), ("test_triplets", 10**8), ("knn_k", 10**4),
                         ("image_size", 4096)):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "must be a positive integer")
            if v > hi:
                bad(name, f"is too large (at most {hi:,})")
        for name in ("lr", "trunk_lr", "momentum", "weight_decay", "eval_margin"):
            v = getattr(self, name)
            if v is None:
                continue
            if not math.isfinite(v):
                bad(name, "must be a finite number")
            if v < 0 or (name in ("lr", "trunk_lr") and v == 0):
                bad(name, "must be positive" if name in ("lr", "trunk_lr") else "must be >= 0")
            if name == "momentum" and v >= 1:  # a momentum of 1 or more makes the steps grow without bound
                bad(name, "must be below 1 (e.g. 0.9)")
        for name in ("seed", "data_seed", "triplet_seed"):
            v = getattr(self, name)
            if not 0 <= v <= MAX_SEED:
                bad(name, f"must be between 0 and {MAX_SEED} (2^32 - 1)")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            bad("threads", "must be between 1 and 1024")
        if isinstance(self.nproc_per_run, bool) or not isinstance(self.nproc_per_run, int) or \
                not 1 <= self.nproc_per_run <= MAX_NPROC:
            bad("nproc_per_run", f"must be a whole number of processes per run, 1 (one process) to {MAX_NPROC}")
        if not (self.device == "cpu" or self.device == "cuda" or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            bad("device", "is not supported; use cpu, cuda or cuda:N")

    def train_config(self) -> TrainConfig:
        """What the trainer reads of this (budgeted) config."""
        return TrainConfig(steps=self.steps or 0, batch_size=self.batch_size, epoch_size=self.epoch_size, lr=self.lr,
                           trunk_lr=self.trunk_lr, optimizer=self.optimizer, momentum=self.momentum,
                           weight_decay=self.weight_decay, lr_schedule=self.lr_schedule,
                           augment=self.augment or "none", seed=self.seed, identity=self.run_id())

    def eval_config(self) -> EvalConfig:
        """What the evaluation reads of this config."""
        return EvalConfig(margin=self.eval_margin, knn_k=self.knn_k, seed=self.seed, augment=self.augment or "none")

    # ----------------------------------------------------------------------------- identity

    def to_dict(self) -> dict:
        """Every field, as plain JSON-ready values."""
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """A stable id of everything that changes the numbers (NOT_IN_ID left out): the run's folder name."""
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_ID}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def group_id(self) -> str:
        """The run id without the seed: runs that differ only by seed aggregate into one table row."""
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_ID + ("seed",)}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def cli_fields() -> list[dataclasses.Field]:
    """The RunConfig fields that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("cli")]


# Settings that only training reads: an untrained method (the raw floor) holds them at their
# defaults, so that it gets one run id (one folder, one table row) whatever the suite trains with.
TRAINING_FIELDS = ("steps", "epochs", "batch_size", "epoch_size", "lr", "trunk_lr", "optimizer", "momentum",
                   "weight_decay", "lr_schedule", "encoder", "embedder", "embedding_dim", "pretrained", "weights",
                   "freeze_bn", "augment", "deterministic")


def untrained(cfg: RunConfig) -> RunConfig:
    """The config of a method that trains nothing: training settings held at their defaults."""
    defaults = RunConfig()
    held = {f: getattr(defaults, f) for f in TRAINING_FIELDS}
    # One process: there is nothing to train, and a world's start would cost more than its evaluation.
    held.update(steps=0, epochs=None, encoder="none", embedding_dim=None, augment="none", epoch_size=None,
                nproc_per_run=1)
    return dataclasses.replace(cfg, **held)
