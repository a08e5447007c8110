"""Callbacks that brainseg adds to Lightning's."""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch


class ReseedEveryEpoch(pl.Callback):
    """Seeds every random number generator from (seed, epoch) at the start of each epoch.

    The shuffle order, the data-loader workers' seeds (and so the augmentations) and dropout
    then depend only on the seed and the epoch, so a run resumed from a checkpoint continues
    exactly as the uninterrupted run would have.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sequence = np.random.SeedSequence([self.seed, trainer.current_epoch])
        epoch_seed = int(sequence.generate_state(1)[0])
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
