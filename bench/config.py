"""Run configuration as dataclasses, with per-dataset defaults and a stable run id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from dmlbench.errors import DMLBenchError

# Defaults that depend on the dataset: the encoder its images suit, and a training length that
# fits the dataset's size on a 2-core CPU.
DATASET_DEFAULTS: dict[str, dict] = {
    "digits": {"encoder": "mlp", "epochs": 30, "embedding_dim": 20},
    "mnist": {"encoder": "convnet", "epochs": 5, "embedding_dim": 20},
    "fashion-mnist": {"encoder": "convnet", "epochs": 5, "embedding_dim": 20},
    "cifar10": {"encoder": "cifar", "epochs": 10, "embedding_dim": 128},
    "folder": {"encoder": "convnet", "epochs": 20, "embedding_dim": 64},
    "npz": {"encoder": "mlp", "epochs": 20, "embedding_dim": 20},
}
FALLBACK_DEFAULTS = {"encoder": "mlp", "epochs": 20, "embedding_dim": 20}

# Fields that do not change the numbers a run produces: left out of the run id, so a run can be
# resumed with another device, data folder or thread count.
NOT_IN_ID = ("device", "data_dir", "threads")


@dataclass
class RunConfig:
    """Everything that defines one (dataset, method, seed) run."""

    dataset: str = "digits"
    method: str = "tvae"
    seed: int = 0
    epochs: int = 0  # 0: the dataset's default
    batch_size: int = 128  # images per step, for every method (pairs and triplets included)
    epoch_size: int = 0  # images per epoch; 0: the size of the training set
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    encoder: str = ""  # "": the dataset's default
    embedding_dim: int = 0  # 0: the dataset's default
    split: Literal["standard", "classes"] = "standard"
    normalize: Literal["unit", "standard"] = "unit"  # pixels in [0, 1], or standardised by train mean/std
    data_seed: int = 0
    data_options: dict = field(default_factory=dict)
    method_params: dict = field(default_factory=dict)
    test_triplets: int = 10_000
    triplet_seed: int = 0
    eval_margin: float = 1.0
    knn_k: int = 5
    device: str = "cpu"
    data_dir: str = ""
    threads: int = 0

    def resolved(self) -> RunConfig:
        base = self.dataset.split(":", 1)[0]
        d = DATASET_DEFAULTS.get(base, FALLBACK_DEFAULTS)
        return dataclasses.replace(
            self,
            epochs=self.epochs or d["epochs"],
            encoder=self.encoder or d["encoder"],
            embedding_dim=self.embedding_dim or d["embedding_dim"],
        )

    def check(self) -> None:
        """Validate a resolved config (defaults filled in)."""
        for name in ("epochs", "batch_size", "embedding_dim", "test_triplets", "knn_k"):
            if getattr(self, name) <= 0:
                raise DMLBenchError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.epoch_size < 0 or self.lr <= 0:
            raise DMLBenchError("--epoch-size must be >= 0 and --lr > 0")
        for name in ("momentum", "weight_decay", "threads", "data_seed", "triplet_seed", "seed"):
            if getattr(self, name) < 0:
                raise DMLBenchError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise DMLBenchError(f"--device {self.device!r} is not supported; use cpu or cuda")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_ID}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def group_id(self) -> str:
        """The run id without the seed: runs that differ only by seed aggregate into one table row."""
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_ID + ("seed",)}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
