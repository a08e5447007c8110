"""`SegmentationModule`: any network + loss + metrics as one LightningModule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from brainseg.config import resolve_channels_last
from brainseg.data.sources import natural_key
from brainseg.metrics import PerImageDice, registry
from brainseg.timing import summarize, time_forward

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class SegmentationModule(pl.LightningModule):
    """Trains, validates and tests one binary segmentation network.

    Args:
        net: maps images (B, C, H, W) to logits (B, 1, H, W).
        loss: maps (logits, masks) to a scalar.
        optimizer: a partial optimizer, finished here with the network's parameters.
        scheduler: a partial LR scheduler stepped once per epoch, or None.
        metrics: keyword arguments of `build_metrics` (threshold, connectivity, min_overlap).
        timing: warm-up and timed iterations of the test-stage latency measurement.
        compile: run the network through `torch.compile` (training and inference timing; on
            CUDA the timing replays CUDA graphs, `mode="reduce-overhead"`).
        channels_last: keep weights and inputs in NHWC layout, faster for convolutions on GPUs.
        config: the resolved run configuration; saved in checkpoints so that a checkpoint alone
            rebuilds its network (see `load_module`).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        metrics: dict[str, Any] | None = None,
        timing: dict[str, int] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # In checkpoints only: the loggers get the run configuration once, from train.py.
        self.save_hyperparameters({"config": config or {}}, logger=False)
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.metric_args = dict(metrics or {})
        self.timing = {"warmup": 10, "iters": 50, **(timing or {})}
        self.channels_last = channels_last
        # The compiled wrapper shares `net`'s parameters. It is kept out of the registered
        # submodules, so checkpoints hold `net.*` keys only, compiled or not.
        object.__setattr__(self, "_forward", torch.compile(net) if compile else net)
        self.compiled = compile

        threshold = self.metric_args.get("threshold", 0.5)
        self.train_metrics = MetricCollection({"dice": PerImageDice(threshold)}, prefix="train/")
        # What each stage logs is declared in brainseg.metrics.registry.
        self.val_metrics = registry.build_metrics(**self.metric_args, stage="val").clone("val/")
        self.test_metrics = registry.build_metrics(**self.metric_args, stage="test").clone("test/")
        # Logged at epoch end, and only when the evaluated set has a tumor-free slice.
        empty_args = {k: v for k, v in self.metric_args.items() if k != "min_overlap"}
        self.empty_slice_metrics = nn.ModuleDict(
            {
                stage: registry.build_empty_slice_metrics(**empty_args, stage=stage).clone(
                    f"{stage}/"
                )
                for stage in ("val", "test")
            }
        )
        # Metrics computed from per-image rows (no torchmetrics state): logged at epoch end.
        self.row_metrics = {
            stage: [s for s in registry.specs(stage) if s.build is None]
            for stage in ("val", "test")
        }
        self.val_rows: list[dict[str, Any]] = []
        self.reliability: dict[str, list[float]] | None = None  # the test set's, for metrics.json
        # Evaluation losses as metrics: sums over every slice of every process, hence exact
        # under DDP (Lightning's sync_dist would average the processes' means).
        self.eval_losses = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.test_rows: list[dict[str, Any]] = []
        self._timing_batch: torch.Tensor | None = None
        self._warned_no_tumor: set[str] = set()  # once per stage, not every validation epoch

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._forward(images)

    def _shared_step(self, batch: dict[str, Any], metrics: MetricCollection, stage: str):
        images, masks = batch["image"], batch["mask"]
        logits = self(images)
        loss = self.loss(logits, masks)
        metrics.update(logits.detach(), masks)
        if stage == "train":
            batch_size = images.shape[0]
            self.log("train/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch_size)
        else:
            self.eval_losses[stage].update(loss.detach(), weight=images.shape[0])
            self.empty_slice_metrics[stage].update(logits.detach(), masks)
            self.log(f"{stage}/loss", self.eval_losses[stage], on_epoch=True, prog_bar=True)
        self.log_dict(
            metrics,
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "test",
            batch_size=images.shape[0],
        )
        return loss, logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._shared_step(batch, self.train_metrics, "train")
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, logits = self._shared_step(batch, self.val_metrics, "val")
        if self.row_metrics["val"]:
            self.val_rows += self._rows(batch, logits, "val")

    def on_validation_epoch_start(self) -> None:
        self.val_rows = []

    def on_validation_epoch_end(self) -> None:
        self._log_empty_slice_metrics("val")
        self._log_row_metrics("val", _gather_rows(self.val_rows))
        self.val_rows = []

    def on_test_epoch_start(self) -> None:
        self.test_rows = []
        self._timing_batch = None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, logits = self._shared_step(batch, self.test_metrics, "test")
        if self._timing_batch is None:
            self._timing_batch = batch["image"].detach()
        self.test_rows += self._rows(batch, logits, "test")

    def _rows(self, batch: dict[str, Any], logits: torch.Tensor, stage: str) -> list[dict]:
        """The batch's per-image rows: id, pid, label and the registry's columns of `stage`."""
        columns = registry.compute_columns(logits.detach(), batch["mask"], self.metric_args, stage)
        columns = {key: value.cpu().tolist() for key, value in columns.items()}
        labels = batch["label"].cpu().tolist()
        rows = []
        for i, (sample_id, pid) in enumerate(zip(batch["id"], batch["pid"], strict=True)):
            row = {"id": sample_id, "pid": pid, "label": labels[i]}
            row.update({key: values[i] for key, values in columns.items()})
            rows.append(row)
        return rows

    def _log_row_metrics(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """Logs the metrics declared without a torchmetrics Metric, from every process's rows
        (gathered, so every process logs the same value)."""
        if not rows or not self.row_metrics[stage]:
            return
        columns = {key: np.array([row[key] for row in rows]) for key in rows[0]}
        values = {
            f"{stage}/{s.name}": registry.value_of(s, columns) for s in self.row_metrics[stage]
        }
        self.log_dict({k: v for k, v in values.items() if np.isfinite(v)}, prog_bar=False)

    def on_test_epoch_end(self) -> None:
        self._log_empty_slice_metrics("test")
        self.test_rows = _gather_rows(self.test_rows)
        self._log_row_metrics("test", self.test_rows)
        if "ece" in self.test_metrics and self.test_metrics["ece"].update_called:
            calibration = self.test_metrics["ece"]
            with calibration.sync_context():  # every process's pixels
                self.reliability = calibration.bins()
        if self._timing_batch is not None:
            for key, value in self.measure_inference(self._timing_batch).items():
                self.log(f"test/{key}", value, sync_dist=True)

    def _log_empty_slice_metrics(self, stage: str) -> None:
        """Logs dice_tumor, empty_correct and fp_lesions_per_empty when the evaluated set has a
        tumor-free slice (dice_tumor only when it also has a tumor slice); warns when it has no
        tumor at all (once per stage). A set with a tumor on every slice logs none of them."""
        metrics = self.empty_slice_metrics[stage]
        if not any(metric.update_called for metric in metrics.values()):
            return
        values = metrics.compute()  # synchronised over processes: every rank decides alike
        metrics.reset()
        dice_tumor = values[f"{stage}/dice_tumor"]
        no_tumor = not torch.isfinite(dice_tumor)
        if (
            no_tumor
            and stage not in self._warned_no_tumor
            and self.trainer.is_global_zero
            and not self.trainer.sanity_checking
        ):
            self._warned_no_tumor.add(stage)
            log.warning(
                "the %s set has no tumor on any slice: its Dice, precision, recall and "
                "lesion recall only measure false positives (1 where nothing is predicted); "
                "read empty_correct (%.4f) and fp_lesions_per_empty (%.4f) instead",
                stage,
                values[f"{stage}/empty_correct"].item(),
                values[f"{stage}/fp_lesions_per_empty"].item(),
            )
        if torch.isfinite(values[f"{stage}/empty_correct"]):  # some slice is tumor-free
            finite = {key: value for key, value in values.items() if torch.isfinite(value)}
            self.log_dict(finite, prog_bar=False)

    def measure_inference(self, batch: torch.Tensor) -> dict[str, float]:
        """Batch-1 latency (ms, after warm-up, synchronised) and images/s at `batch`'s size."""
        was_training = self.training
        self.eval()
        context = self.trainer.precision_plugin.forward_context if self._trainer else None
        kwargs = {"context": context} if context else {}
        forward = self._timed_forward(batch.device)
        latency = summarize(time_forward(forward, batch[:1], **self.timing, **kwargs))
        iters = max(1, self.timing["iters"] // 5)
        batched = time_forward(forward, batch, warmup=2, iters=iters, **kwargs)
        self.train(was_training)
        return {
            "inference_ms": latency["mean"],
            "inference_ms_std": latency["std"],
            "inference_ms_median": latency["median"],
            "images_per_s": batch.shape[0] * 1000.0 / summarize(batched)["median"],
        }

    def _timed_forward(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        if not (self.compiled and device.type == "cuda"):
            return self
        # At batch 1 the GPU waits on kernel launches; CUDA graphs replay the whole network as
        # one launch. Recorded once per input shape, during the timing's warm-up.
        graphs = torch.compile(self.net, mode="reduce-overhead")

        def forward(images: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            return graphs(images)

        return forward

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All processes' per-image rows, each slice once, in natural order of the ids."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, rows)
    unique = {row["id"]: row for part in gathered for row in part}
    return sorted(unique.values(), key=lambda row: natural_key(row["id"]))


def build_network(
    model_cfg: DictConfig | dict[str, Any], load_pretrained: bool = True
) -> nn.Module:
    """Instantiates the network of a resolved `model` config; `name` is a label, not an argument.

    With `load_pretrained=False`, backbone weights are not fetched: the caller loads its own.
    """
    cfg = OmegaConf.create(model_cfg)
    cfg.pop("name", None)
    if not load_pretrained:
        for key, value in (("pretrained", False), ("weights_path", None)):
            if key in cfg:
                cfg[key] = value
    return instantiate(cfg)


def build_module(
    cfg: DictConfig | dict[str, Any], load_pretrained: bool = True
) -> SegmentationModule:
    """The `SegmentationModule` a run configuration describes (model, loss, optimiser, metrics)."""
    config = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    cfg = OmegaConf.create(config)
    return SegmentationModule(
        net=build_network(cfg.model, load_pretrained),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        metrics=OmegaConf.to_container(cfg.metrics),
        timing=OmegaConf.to_container(cfg.timing),
        compile=bool(cfg.runtime.compile),
        channels_last=resolve_channels_last(cfg.runtime.channels_last, cfg.trainer.accelerator),
        config=config,
    )


def read_checkpoint(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The content of a checkpoint written by brainseg.train; a ValueError naming the file and
    what it should be when it is anything else."""
    path = Path(ckpt_path)
    what = (
        "give a checkpoint that brainseg.train wrote, <run_dir>/checkpoints/best.ckpt or last.ckpt"
    )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: {what}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch.load raises whatever its unpickler meets
        raise ValueError(
            f"checkpoint {path} is not a readable PyTorch checkpoint "
            f"({type(error).__name__}: {error}); it may be truncated or another kind of file: "
            f"{what}"
        ) from error
    if not isinstance(checkpoint, dict) or not checkpoint.get("hyper_parameters", {}).get("config"):
        raise ValueError(f"checkpoint {path} holds no brainseg run configuration: {what}")
    return checkpoint


def load_module(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu"
) -> SegmentationModule:
    """Rebuilds a trained `SegmentationModule` from its checkpoint alone, in eval mode."""
    checkpoint = read_checkpoint(ckpt_path, map_location)
    config = checkpoint["hyper_parameters"]["config"]
    config["runtime"]["compile"] = False
    module = build_module(config, load_pretrained=False)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
