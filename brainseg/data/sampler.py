"""The training order and augmentation seeds of an epoch, as a function of (seed, epoch) alone.

A run resumed from a checkpoint continues exactly as the uninterrupted run would have only if
each epoch draws the same random numbers whatever happened before it. Nothing here reads a
global generator: `EpochSampler` shuffles with a generator seeded from (seed, epoch), and hands
every index to the dataset together with the seed of that sample's augmentation, derived from
(seed, epoch, index). So neither the number of loader workers, nor whether they persist across
epochs, nor when a generator happens to be reseeded changes what a training epoch sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed from integers (e.g. seed, epoch, index); different tuples, unrelated seeds."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochSampler(DistributedSampler):
    """Shuffles by (seed, epoch); yields `(index, augmentation seed)` pairs.

    A `DistributedSampler`, so Lightning leaves it in place under DDP and calls `set_epoch`
    before every training epoch: the permutation is the same on every process and each
    process takes every `num_replicas`-th index from `rank` on (padding with repeated indices
    to equal shares, as `DistributedSampler` does). Each sample's augmentation seed depends on
    (seed, epoch, index), not on the process or the worker that loads it.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]  # equal shares
        for index in order[self.rank : self.total_size : self.num_replicas]:
            yield index, derive_seed(self.seed, self.epoch, index)
