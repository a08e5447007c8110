"""What brainseg adds to Lightning's Trainer: per-step seeding, a wall clock that survives a resume,
a check of the CPU thread count on resume, and checkpoint files written atomically and read
without running code."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn

from brainseg.atomic import atomic_path
from brainseg.checkpoints import load_checkpoint_file
from brainseg.data.sampler import derive_seed

log = logging.getLogger(__name__)


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


class WallClock(pl.Callback):
    """The run's wall time, counted across a resume.

    Each checkpoint stores the time the run had taken when it was written; a fit resumed from
    it counts on from there. The time between that checkpoint and the cut is not counted: the
    resumed run does that work again. Testing a checkpoint (`trainer.test(ckpt_path=...)`)
    leaves the clock alone.
    """

    KEY = "wall_time_s"

    def __init__(self) -> None:
        self.started = time.time()
        self.before = 0.0  # what the run had taken before this process resumed it

    def elapsed(self) -> float:
        return self.before + time.time() - self.started

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[self.KEY] = self.elapsed()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self.before = float(checkpoint.get(self.KEY, 0.0))


class CpuThreads(pl.Callback):
    """Warns when a CPU run is resumed with another number of threads than it trained with.

    On a CPU a run's numbers depend on torch's thread count (parallel sums add in another
    order), so a run resumed with a different count continues, but not as the uninterrupted
    run would have. Each checkpoint stores the count; the warning names the fix.
    """

    KEY = "cpu_threads"

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[self.KEY] = torch.get_num_threads()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved, now = checkpoint.get(self.KEY), torch.get_num_threads()
        resuming = trainer.state.fn == TrainerFn.FITTING
        if resuming and trainer.strategy.root_device.type == "cpu" and saved not in (None, now):
            log.warning(
                "this run trained with %d CPU threads and resumes with %d: it goes on, but not "
                "exactly as the uninterrupted run; resume with OMP_NUM_THREADS=%d for that",
                saved,
                now,
                saved,
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its path and moves it into place: a run killed while
    saving leaves the previous `last.ckpt` or `best.ckpt` whole, never a truncated one.

    Reads each checkpoint Lightning loads (a resume, `trainer.test(ckpt_path=...)`) with
    `brainseg.checkpoints.load_checkpoint_file`: without running code unless `trust`
    (`trust_checkpoint=true`).
    """

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = bool(trust)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        # Lightning's own default location: where the tensors were saved
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        return load_checkpoint_file(path, map_location=location, trust=self.trust)
