"""`SegmentationModule`: any network + loss + metrics as one LightningModule."""

from __future__ import annotations

import contextlib
import inspect
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

from brainseg.checkpoints import UntrustedCheckpointError, load_checkpoint_file
from brainseg.config import resolve_channels_last
from brainseg.data.sources import natural_key
from brainseg.metrics import PerImageDice, registry
from brainseg.models.registry import build_network
from brainseg.timing import CudaGraphForward, batch1_masks, choose_path, summarize, time_forward

log = logging.getLogger(__name__)
# torch.compile's modes (None: its default); see SegmentationModule's `compile_mode`.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

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
        compile_mode: `torch.compile`'s mode for the training step's network (forward and
            backward; the optimizer step stays eager): None (default), "reduce-overhead" (CUDA
            graphs on CUDA), "max-autotune" or "max-autotune-no-cudagraphs".
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
        compile_mode: str | None = None,
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
        if compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"runtime.compile_mode={compile_mode!r}: use one of "
                + ", ".join(map(str, COMPILE_MODES))
            )
        forward = torch.compile(net, mode=compile_mode) if compile else net
        object.__setattr__(self, "_forward", forward)
        self.compiled = compile
        self.compile_mode = compile_mode

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
            self.log(
                "train/loss",
                loss,
                on_epoch=True,
                prog_bar=self._step_loss_in_progress_bar(),
                batch_size=batch_size,
            )
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

    def _step_loss_in_progress_bar(self) -> bool:
        """Whether the progress bar shows each step's loss. Lightning reads every progress-bar
        value back to the host after every step, even with no bar shown: on a GPU that sync
        stalls the queue of kernels each step, so the loss is shown per step only where it
        costs nothing, a shown bar on the CPU. The logged values are the same either way."""
        trainer = self._trainer
        shown = trainer is not None and trainer.progress_bar_callback is not None
        return shown and self.device.type == "cpu"

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
        self.inference_path: str | None = None

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
        """Batch-1 latency (ms, after warm-up, synchronised) of the fastest path whose masks
        match eager's, eager's beside it, and images/s at `batch`'s size (eager).

        The paths: eager in the run's precision; compiled when `runtime.compile`; on CUDA a
        captured CUDA graph in fp32 and in bf16. A path counts when its masks on `batch`'s
        first images differ from eager's in at most `timing.MASK_TOLERANCE` of the pixels
        (`choose_path`). The chosen path's name is left in `self.inference_path`.
        """
        was_training = self.training
        self.eval()
        context = self.trainer.precision_plugin.forward_context if self._trainer else None
        kwargs = {"context": context} if context else {}
        checked = batch[:16]  # one image per call, as timed
        # Eager's rate at the batch's size first: a path that fails below cannot spoil it.
        iters = max(1, self.timing["iters"] // 5)
        batched = time_forward(self._eager, batch, warmup=2, iters=iters, **kwargs)
        paths = []
        for name, make, path_context in self._inference_paths(batch.device, context):
            try:
                with torch.inference_mode():
                    forward = make(batch[:1])
                masks = batch1_masks(forward, checked, path_context)
                if not paths:
                    reference = masks
                latency = summarize(
                    time_forward(forward, batch[:1], **self.timing, context=path_context)
                )
            except Exception as error:  # a path that fails leaves the others timed
                if not paths:
                    raise
                log.warning("batch-1 path %s left out: %s: %s", name, type(error).__name__, error)
                continue
            mismatch = (masks != reference).float().mean().item()
            paths.append({"name": name, "ms": latency["mean"], "mismatch": mismatch} | latency)
        chosen = choose_path(paths)
        if batch.device.type != "cuda":
            log.info("batch-1 latency on %s: eager only (CUDA graphs need CUDA)", batch.device)
        log.info(
            "batch-1 paths: %s; timed %s",
            ", ".join(
                f"{p['name']} {p['ms']:.3f} ms (masks differ {p['mismatch']:.1e})" for p in paths
            ),
            chosen["name"],
        )
        self.inference_path = chosen["name"]
        self.inference_paths = paths
        self.train(was_training)
        return {
            "inference_ms": chosen["mean"],
            "inference_ms_std": chosen["std"],
            "inference_ms_median": chosen["median"],
            "inference_ms_eager": paths[0]["mean"],
            "images_per_s": batch.shape[0] * 1000.0 / summarize(batched)["median"],
        }

    def _eager(self, images: torch.Tensor) -> torch.Tensor:
        """The network uncompiled, in the run's memory layout."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _inference_paths(self, device: torch.device, context) -> list[tuple[str, Any, Any]]:
        """(name, factory of the forward given an example, context) of each batch-1 path,
        eager first."""
        context = context or contextlib.nullcontext
        precision = str(self.trainer.precision) if self._trainer else "32-true"
        label = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(precision, "fp32")
        paths = [(f"eager {label}", lambda example: self._eager, context)]
        if self.compiled:
            compiled = "compiled (CUDA graphs)" if device.type == "cuda" else "compiled"
            paths.append((f"{compiled} {label}", lambda e: self._timed_forward(device), context))
        if device.type == "cuda":
            for bf16 in (False, True) if torch.cuda.is_bf16_supported() else (False,):
                graph = lambda e, bf16=bf16: CudaGraphForward(self.net, e, bf16, self.channels_last)  # noqa: E731
                name = "cuda-graph bf16" if bf16 else "cuda-graph fp32"
                paths.append((name, graph, contextlib.nullcontext))
        return paths

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
        optimizer = make_optimizer(self.optimizer_factory, self.net.parameters(), self.device)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def make_optimizer(
    factory: OptimizerFactory, params: Any, device: torch.device
) -> torch.optim.Optimizer:
    """`factory(params=params)`, with `fused=True` on CUDA for optimizers that have a fused
    implementation (AdamW, Adam, SGD) unless the configuration chose `fused` or `foreach`:
    one kernel per step for all parameters instead of dozens, the same update up to rounding."""
    options = getattr(factory, "keywords", {}) or {}
    cls = getattr(factory, "func", factory)
    fusable = isinstance(cls, type) and "fused" in inspect.signature(cls).parameters
    if device.type == "cuda" and fusable and not {"fused", "foreach"} & set(options):
        return factory(params=params, fused=True)
    return factory(params=params)


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All processes' per-image rows, each slice once, in natural order of the ids."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, rows)
    unique = {row["id"]: row for part in gathered for row in part}
    return sorted(unique.values(), key=lambda row: natural_key(row["id"]))


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
        compile_mode=cfg.runtime.get("compile_mode"),
        channels_last=resolve_channels_last(cfg.runtime.channels_last, cfg.trainer.accelerator),
        config=config,
    )


def read_checkpoint(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> dict[str, Any]:
    """The content of a checkpoint written by brainseg.train, read without running code (see
    `brainseg.checkpoints`; `trust`: `trust_checkpoint=true`). A ValueError naming the file and
    what it should be when it is anything else; an `UntrustedCheckpointError` naming the flag
    when it needs more than a brainseg checkpoint holds."""
    path = Path(ckpt_path)
    what = (
        "give a checkpoint that brainseg.train wrote, <run_dir>/checkpoints/best.ckpt or last.ckpt"
    )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: {what}")
    try:
        checkpoint = load_checkpoint_file(path, map_location=map_location, trust=trust)
    except UntrustedCheckpointError:
        raise
    except Exception as error:  # torch.load raises whatever its unpickler meets
        raise ValueError(
            f"checkpoint {path} is not a readable PyTorch checkpoint "
            f"({type(error).__name__}: {_first_line(error)}); it may be truncated or another "
            f"kind of file: {what}"
        ) from error
    if not isinstance(checkpoint, dict) or not checkpoint.get("hyper_parameters", {}).get("config"):
        raise ValueError(f"checkpoint {path} holds no brainseg run configuration: {what}")
    return checkpoint


def _first_line(error: Exception) -> str:
    # torch's weights-only errors run to a page of advice around one line of cause
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def load_module(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False
) -> SegmentationModule:
    """Rebuilds a trained `SegmentationModule` from its checkpoint alone, in eval mode (`trust`:
    see `read_checkpoint`)."""
    checkpoint = read_checkpoint(ckpt_path, map_location, trust)
    config = checkpoint["hyper_parameters"]["config"]
    config["runtime"]["compile"] = False
    module = build_module(config, load_pretrained=False)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
