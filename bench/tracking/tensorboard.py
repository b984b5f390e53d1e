"""``--log tensorboard``: TensorBoard event files in each run's own folder (``tb/``), so that
``tensorboard --logdir results/<dataset>`` shows the methods side by side: the loss terms and the
learning rate per step, the test metrics, and the test embeddings in the Embedding Projector with
their labels and, for images, thumbnails (a sprite)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmlbench.core.errors import DMLBenchError
from dmlbench.tracking.base import register_logger

PROJECTOR_POINTS = 4000  # the projector's sprite stays small enough to load (points x thumbnail pixels)
THUMB = 32  # thumbnail side in the sprite


@register_logger("tensorboard")
class TensorBoardLogger:
    """TensorBoard events in ``<run>/tb/`` (pip install 'dmlbench[tensorboard]')."""

    @staticmethod
    def check() -> None:
        """Refuse, with the install hint, where TensorBoard does not import."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise DMLBenchError("--log tensorboard needs TensorBoard: pip install 'dmlbench[tensorboard]'") from None

    def __init__(self, run_dir: Path, config: dict, context: dict, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run purges what an interrupted attempt logged after its checkpoint, so its
        # curves continue instead of repeating steps.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=resume_step + 1 if resume_step
                                    else None)

    def log_steps(self, first_step: int, names: Sequence[str], values: np.ndarray, lrs: Sequence[float]) -> None:
        """Each step's loss terms, their total and the learning rate."""
        for i, row in enumerate(values):
            step = first_step + i + 1
            for name, v in zip([*names, "loss"], row):
                self.writer.add_scalar(f"train/{name}", float(v), step)
            self.writer.add_scalar("train/lr", float(lrs[i]), step)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """The test metrics at the run's last step."""
        for k, v in metrics.items():
            self.writer.add_scalar(f"test/{k}", float(v), step)

    def log_embeddings(self, embeddings: np.ndarray, labels: np.ndarray, images) -> None:
        """A seeded subsample of the test embeddings for the projector, with labels and thumbnails."""
        import torch

        n = len(embeddings)
        rows = np.sort(np.random.default_rng(0).choice(n, PROJECTOR_POINTS, replace=False)) if n > PROJECTOR_POINTS \
            else np.arange(n)
        thumbs = None
        if images is not None:
            x = torch.from_numpy(np.ascontiguousarray(images(rows))).float()
            x = x / max(float(x.max()), 1.0)
            side = min(THUMB, x.shape[-1])
            thumbs = torch.nn.functional.interpolate(x, size=(side, side), mode="area")
        self.writer.add_embedding(torch.from_numpy(np.asarray(embeddings[rows], np.float32)),
                                  metadata=[str(v) for v in labels[rows]], label_img=thumbs, tag="test")

    def log_files(self, paths: Sequence[Path]) -> None:
        """TensorBoard keeps no files: they stay in the run's folder."""

    def close(self) -> None:
        """Flush the event file."""
        self.writer.close()
