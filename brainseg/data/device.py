"""Batches drawn from data that lives on the model's device (`data.on_device`).

The loader path stacks slices in worker processes, pins them and copies every batch to the
GPU. Here the split's arrays are copied to the device once, and each batch is an index into
them: no workers, no per-step copy, nothing between the steps but a gather on the device.

What the batches hold is exactly what the loader path gives with `augment_on=device`:
- training batches are uint8 image and mask (B, 1, H, W) drawn in the order of the same
  `EpochSampler` (seed, epoch), with the seed of the batch's augmentation derived from its
  slices' seeds as `BrainTumorDataModule.on_before_batch_transfer` derives it; the data module
  augments them on the device in `on_after_batch_transfer`, as it does the loader's;
- validation and test batches are the evaluation transform's own outputs (normalised float32,
  made once per slice on the host with the same transform), in the loader's order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from brainseg.data.sampler import EpochSampler, derive_seed


class _SubsetOnDevice:
    """A subset's arrays on a device, and its batches: a gather (or a view) of them."""

    batch_sampler = None  # what Lightning looks up on a loader before its sampler

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        ids: Sequence[str],
        pids: Sequence[str],
        labels: torch.Tensor,
    ) -> None:
        self.images, self.masks, self.labels = images, masks, labels
        self.ids, self.pids = list(ids), list(pids)

    def _batch(self, index: slice | torch.Tensor, rows: Sequence[int]) -> dict[str, Any]:
        """The slices at `index` on the device, `rows` the same slices' positions on the host."""
        return {
            "image": self.images[index],
            "mask": self.masks[index],
            "id": [self.ids[i] for i in rows],
            "pid": [self.pids[i] for i in rows],
            "label": self.labels[index],
        }


class DeviceTrainBatches(_SubsetOnDevice):
    """Training batches of uint8 arrays on a device, in `sampler`'s order.

    Lightning takes it as a training dataloader: it has a length, and its `sampler` gets
    `set_epoch` before every epoch, as a DataLoader's does.

    Args:
        images, masks: uint8 (N, 1, H, W) of the training subset, on the device.
        ids, pids: per slice of the subset.
        labels: int64 (N,) on the device.
        sampler: the epoch's order and per-slice augmentation seeds.
        batch_size: slices per batch.
        drop_last: leave out the last incomplete batch (as the training loader does).
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        ids: Sequence[str],
        pids: Sequence[str],
        labels: torch.Tensor,
        sampler: EpochSampler,
        batch_size: int,
        drop_last: bool,
    ) -> None:
        super().__init__(images, masks, ids, pids, labels)
        self.sampler = sampler
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        count = len(self.sampler) / self.batch_size
        return math.floor(count) if self.drop_last else math.ceil(count)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pairs = list(self.sampler)  # (index, seed) of this epoch, on the host
        order = [index for index, _ in pairs]
        # One copy of the epoch's order to the device; each batch slices it.
        on_device = torch.tensor(order, dtype=torch.long).to(self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, len(order))
            yield self._batch(on_device[start:stop], order[start:stop]) | {
                # The batch's augmentation seed, as on_before_batch_transfer derives it.
                "seed": derive_seed(*(seed for _, seed in pairs[start:stop])),
            }


class DeviceEvalBatches(_SubsetOnDevice):
    """Validation or test batches of prepared tensors on a device, in the loader's order.

    Args:
        images, masks: the evaluation transform's outputs (N, C, H, W) and (N, 1, H, W).
        ids, pids: per slice of the subset.
        labels: int64 (N,) on the device.
        batch_size: slices per batch.
        sampler: which slices this process evaluates (DDP), None for all in order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        ids: Sequence[str],
        pids: Sequence[str],
        labels: torch.Tensor,
        batch_size: int,
        sampler: Sampler | None = None,
    ) -> None:
        super().__init__(images, masks, ids, pids, labels)
        self.batch_size = batch_size
        self.sampler = sampler
        self.order = list(sampler) if sampler is not None else None

    def __len__(self) -> int:
        count = len(self.order) if self.order is not None else len(self.ids)
        return math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.order is None:  # one process: contiguous views, no copy at all
            for start in range(0, len(self.ids), self.batch_size):
                part = slice(start, start + self.batch_size)
                yield self._batch(part, range(len(self.ids))[part])
            return
        on_device = torch.tensor(self.order, dtype=torch.long).to(self.images.device)
        for start in range(0, len(self.order), self.batch_size):
            yield self._batch(
                on_device[start : start + self.batch_size],
                self.order[start : start + self.batch_size],
            )


def uint8_on_device(arrays: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """Slices `index` of uint8 (N, H, W) `arrays` as (n, 1, H, W) on `device`."""
    return torch.from_numpy(np.ascontiguousarray(arrays[index]))[:, None].to(device)
