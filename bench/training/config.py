"""What the trainer reads: a small training config, apart from the run's whole ``RunConfig``.

The trainer knows no method and no suite; it needs the step budget and its epochs, the optimiser
and its schedule, the augmentation, the seed (each epoch's draws are a function of it), and an
identity that ties a checkpoint to its run (a checkpoint of another configuration is never
resumed). :meth:`dmlbench.running.config.RunConfig.train_config` makes one from a run's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    """The training settings of one run (imports no torch)."""

    steps: int
    batch_size: int = 128
    epoch_size: int | None = None  # images per epoch; None: every step is one epoch's worth of batch_size
    lr: float = 1e-3
    trunk_lr: float | None = None
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    augment: str = "none"
    seed: int = 0
    identity: str = ""  # the run id: a checkpoint saved under another identity is not resumed

    def steps_per_epoch(self) -> int:
        """Steps between checkpoints: ``epoch_size // batch_size`` (at least one)."""
        return max(1, int(self.epoch_size or self.batch_size) // self.batch_size)


def epoch_plan(total_steps: int, steps_per_epoch: int) -> list[int]:
    """Steps in each epoch: full epochs, then the remainder."""
    full, rest = divmod(total_steps, steps_per_epoch)
    return [steps_per_epoch] * full + ([rest] if rest else [])
