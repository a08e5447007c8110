"""What brainseg adds to Lightning's Trainer: per-step seeding and atomic checkpoint files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from brainseg.atomic import atomic_path
from brainseg.data.sampler import derive_seed


class SeedEveryStep(pl.Callback):
    """Seeds Python's, numpy's and torch's global generators before every training step.

    From (seed, epoch, step of the epoch, rank): dropout, and whatever else a training step
    draws from a global generator, is then the same in a resumed run as in the uninterrupted
    one, whatever drew random numbers before the step (loader workers starting, validation).
    The data's randomness does not come from here (see `brainseg.data.sampler`).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step_seed = derive_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        random.seed(step_seed)
        np.random.seed(step_seed % 2**32)
        torch.manual_seed(step_seed)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its path and moves it into place: a run killed while
    saving leaves the previous `last.ckpt` or `best.ckpt` whole, never a truncated one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
