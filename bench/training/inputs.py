"""From stored uint8 images to what the encoder sees, batch by batch, on the run's device.

:class:`DeviceImages` gathers a batch by index: from a tensor sharing the in-memory array (CPU),
from the whole dataset uploaded once when it fits the GPU's budget, or from the memory-mapped
cache otherwise (only the batch is read and sent). :class:`InputPipeline` turns the uint8 batch
into float on the device: scale, augmentation (:mod:`dmlbench.training.augment`), normalisation. The
dataset is never materialised as float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dmlbench.data import Data, Part
from dmlbench.training.augment import eval_transform, train_transform

GPU_BUDGET_FRACTION = 0.25  # of free GPU memory a dataset may take when uploaded whole


class DeviceImages:
    """A part's images and labels, gathered by index onto ``device``."""

    def __init__(self, part: Part, device: torch.device):
        self.part, self.device = part, torch.device(device)
        self.y = torch.from_numpy(np.ascontiguousarray(part.y)).to(self.device)
        self.whole: torch.Tensor | None = None
        if self.device.type == "cpu" and part.contiguous:
            with warnings.catch_warnings():  # a read-only array (np.frombuffer): torch is never asked to write it
                warnings.simplefilter("ignore", UserWarning)
                self.whole = torch.from_numpy(part.x)
        elif self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if part.nbytes <= GPU_BUDGET_FRACTION * free:
                with warnings.catch_warnings():  # read-only host array, copied to the GPU at once
                    warnings.simplefilter("ignore", UserWarning)
                    self.whole = torch.from_numpy(np.ascontiguousarray(part.images())).to(self.device)

    def __len__(self) -> int:
        return len(self.part)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``idx``, on the device (from the whole upload, or read and sent)."""
        if self.whole is not None:
            return self.whole[idx.to(self.whole.device)]
        x = torch.from_numpy(np.ascontiguousarray(self.part.images(idx.cpu().numpy())))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def blocks(self, size: int):
        """Consecutive (start, uint8 block on the device) for embedding passes."""
        for s in range(0, len(self), size):
            idx = torch.arange(s, min(s + size, len(self)))
            yield s, self.take(idx)


class InputPipeline:
    """uint8 (or float) batches -> float images of ``out_hw`` for the encoder."""

    def __init__(self, data: Data, augment: str = "none", out_hw: tuple[int, int] | None = None):
        self.scale = float(data.scale)
        self.norm = data.norm
        self.augment = augment or "none"
        self.out_hw = tuple(out_hw or data.input_shape[1:])

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            mean, std = self.norm
            x = (x - mean) / std
        return x

    def train(self, x: torch.Tensor, gen: torch.Generator, rows: torch.Tensor | None = None,
              total: int | None = None) -> torch.Tensor:
        """A training batch as float: scaled, augmented (or resized) with draws from ``gen``, normalised.
        ``rows``: ``x`` is these rows of a batch of ``total`` (the draws are the whole batch's)."""
        x = self._float(x)
        if self.augment != "none" or tuple(x.shape[-2:]) != self.out_hw:
            x = train_transform(x, self.augment, self.out_hw, gen, rows, total)
        return self._normalise(x)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """An evaluation batch as float: scaled, brought to ``out_hw`` if it differs, normalised."""
        x = self._float(x)
        if tuple(x.shape[-2:]) != self.out_hw:
            x = eval_transform(x, self.augment, self.out_hw)
        return self._normalise(x)

    def output_shape(self, channels: int) -> tuple[int, int, int]:
        """The (C, H, W) of the images the encoder gets."""
        return (channels, *self.out_hw)
