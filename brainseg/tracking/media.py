"""`WandbMedia`: what a training run shows in W&B besides numbers — a fixed panel of validation
slices every few epochs (image, truth and prediction overlaid, to scrub through epochs), and at
test time the per-image table with the worst slices. Does nothing without a WandbLogger."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from brainseg.data.sources import LABEL_NAMES
from brainseg.inference import predict_logits
from brainseg.metrics import logits_to_masks, per_image_stats
from brainseg.tracking.run import wandb_run_of

log = logging.getLogger(__name__)

CLASS_LABELS = {0: "background", 1: "tumor"}


class WandbMedia(pl.Callback):
    """Logs validation slices every `every_n_epochs` and the per-image test table to W&B.

    Args:
        every_n_epochs: validation epochs between two panels (the first and the last epoch
            always get one); 0 turns the panels off.
        num_slices: slices in the validation panel, spread evenly over the validation set and
            the same every epoch.
        worst_slices: lowest-Dice test slices logged as images with the table; 0: none.
        table: log the per-image test metrics as a `wandb.Table` (`test/per_image`).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_slices: int = 4,
        worst_slices: int = 4,
        table: bool = True,
    ) -> None:
        for key, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_slices", num_slices),
            ("worst_slices", worst_slices),
        ):
            if value < 0:
                raise ValueError(f"callbacks.wandb_media.{key}={value} must be 0 (off) or more")
        self.every_n_epochs = int(every_n_epochs)
        self.num_slices = int(num_slices)
        self.worst_slices = int(worst_slices)
        self.table = bool(table)
        # Seconds spent per call, by what was logged: the cost of this callback, in the summary.
        self.seconds: dict[str, list[float]] = {"val_slices": [], "test_media": []}

    def panel_due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or not self.every_n_epochs or not self.num_slices:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run_of(trainer.loggers)
        if run is None or not self.panel_due(trainer):
            return
        started = time.perf_counter()
        dataset = _dataset(trainer.val_dataloaders)
        indices = np.linspace(0, len(dataset) - 1, min(self.num_slices, len(dataset)))
        images = slice_images(pl_module, dataset, sorted({int(i) for i in indices}))
        run.log({"val/slices": images, "trainer/global_step": trainer.global_step})
        self._spent("val_slices", started, run)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run_of(trainer.loggers)
        rows = getattr(pl_module, "test_rows", None)
        if run is None or not rows or not (self.table or self.worst_slices):
            return
        started = time.perf_counter()
        media = test_media(
            pl_module, _dataset(trainer.test_dataloaders), rows, self.worst_slices, self.table
        )
        run.log({**media, "trainer/global_step": trainer.global_step})
        self._spent("test_media", started, run)

    def _spent(self, what: str, started: float, run: Any) -> None:
        self.seconds[what].append(time.perf_counter() - started)
        run.summary[f"media/{what}_s"] = float(np.mean(self.seconds[what]))


def slice_images(module: pl.LightningModule, dataset: Dataset, indices: Sequence[int]) -> list[Any]:
    """`wandb.Image`s of `dataset[indices]`: the image with the truth and the prediction of
    `module` as W&B segmentation masks (toggled apart in the W&B app), Dice in the caption."""
    import wandb

    items = [dataset[i] for i in indices]
    images = torch.stack([item["image"] for item in items]).to(module.device)
    masks = torch.stack([item["mask"] for item in items]).to(module.device)
    metric_args = dict(getattr(module, "metric_args", {}) or {})
    threshold = metric_args.get("threshold", 0.5)
    logits = _predict(module, images)
    dice = per_image_stats(logits, masks, **metric_args)["dice"].tolist()
    predicted = logits_to_masks(logits, threshold)[:, 0].cpu().numpy().astype(np.uint8)
    truth = (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
    pictures = []
    for i, item in enumerate(items):
        label = LABEL_NAMES.get(int(item["label"]), str(item["label"]))
        caption = f"{item['id']} ({label}) Dice {dice[i]:.3f}"
        pictures.append(
            wandb.Image(
                _display(images[i]),
                masks={
                    "truth": {"mask_data": truth[i], "class_labels": CLASS_LABELS},
                    "prediction": {"mask_data": predicted[i], "class_labels": CLASS_LABELS},
                },
                caption=caption,
            )
        )
    return pictures


def test_media(
    module: pl.LightningModule,
    dataset: Dataset,
    rows: list[dict[str, Any]],
    worst: int,
    table: bool = True,
) -> dict[str, Any]:
    """`test/per_image`: a `wandb.Table` of the per-image rows (plus the tumor type's name), and
    `test/worst_slices`: images of the `worst` slices by Dice."""
    import wandb

    media: dict[str, Any] = {}
    if table:
        columns = list(rows[0])
        at = columns.index("label") + 1 if "label" in columns else len(columns)
        columns.insert(at, "tumor_type")
        data = [
            [_tumor_type(row) if c == "tumor_type" else row.get(c) for c in columns] for row in rows
        ]
        media["test/per_image"] = wandb.Table(columns=columns, data=data)
    if worst:
        position = {sample_id: i for i, sample_id in enumerate(getattr(dataset, "ids", []))}
        lowest = sorted(rows, key=lambda row: row["dice"])[:worst]
        indices = [position[row["id"]] for row in lowest if row["id"] in position]
        if indices:
            media["test/worst_slices"] = slice_images(module, dataset, indices)
    return media


def _tumor_type(row: dict[str, Any]) -> str:
    return LABEL_NAMES.get(int(row.get("label") or 0), str(row.get("label")))


def _predict(module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
    """Logits by brainseg's one inference path, at the precision the trainer runs in (the
    test stage's), so the shown masks are those the metrics score."""
    was_training = module.training
    module.eval()
    trainer = module._trainer
    precision = str(trainer.precision) if trainer else "32-true"
    logits = predict_logits(module, images, precision)
    module.train(was_training)
    return logits


def _display(image: torch.Tensor) -> np.ndarray:
    """The first channel of a normalised (C, H, W) image, stretched to uint8 for display."""
    grey = image[0].float()
    low, high = grey.min(), grey.max()
    scaled = (grey - low) / (high - low).clamp_min(1e-6)
    return (scaled * 255).round().to(torch.uint8).cpu().numpy()


def _dataset(loaders: DataLoader | Sequence[DataLoader] | None) -> Dataset:
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    if loader is None:
        raise RuntimeError("WandbMedia: the trainer has no evaluation loader to draw slices from")
    return loader.dataset
