"""Experiment tracking with Weights & Biases: each training run's identity (name, tags, group,
id kept across resumes), its summary, and the sweep's group."""

from __future__ import annotations

import logging
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from brainseg.atomic import write_text
from brainseg.config import uses_cuda

log = logging.getLogger(__name__)

# The run directory's W&B run id: a resumed run continues the same W&B run.
RUN_ID_FILE = "wandb_id.txt"


def sweep_group() -> str | None:
    """One name per Hydra multirun sweep (its directory), so W&B groups a sweep's runs."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return str(Path(hydra_cfg.sweep.dir)).replace(os.sep, "_")


def experiment_preset() -> str | None:
    """The Hydra choice of the `experiment` group (study, cpu, smoke), None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def run_name(cfg: DictConfig) -> str:
    """`<model>-seed<s>`, plus `-fold<k>` with `data.fold`: unique within a sweep over those."""
    name = f"{cfg.model.name}-seed{cfg.seed}"
    fold = OmegaConf.select(cfg, "data.fold")
    return name if fold is None else f"{name}-fold{fold}"


def run_tags(cfg: DictConfig) -> list[str]:
    """`key:value` tags to filter and group runs by in W&B, from the configuration as it will
    run on this machine (precision and device resolved)."""
    fold = OmegaConf.select(cfg, "data.fold")
    preset = experiment_preset()
    tags = [
        f"model:{cfg.model.name}",
        f"seed:{cfg.seed}",
        f"precision:{OmegaConf.select(cfg, 'trainer.precision')}",
        f"device:{_device_of(str(OmegaConf.select(cfg, 'trainer.accelerator') or 'auto'))}",
        # the network's own switch: a U-Net has no backbone to initialise, whatever `pretrained`
        "pretrained" if OmegaConf.select(cfg, "model.pretrained") else "scratch",
    ]
    if preset is not None:
        tags.insert(1, f"preset:{preset}")
    if fold is not None:
        tags.append(f"fold:{fold}")
    return tags


def _device_of(accelerator: str) -> str:
    if uses_cuda(accelerator):
        return torch.cuda.get_device_name(0)
    return "cpu" if accelerator in ("auto", "gpu", "cuda") else accelerator


def run_id(output_dir: Path, resume: bool) -> str:
    """The W&B run id of the run in `output_dir`: the one it was given before when it resumes
    from a checkpoint, otherwise a new one. Kept in `output_dir/wandb_id.txt`."""
    path = Path(output_dir) / RUN_ID_FILE
    if resume and path.is_file() and (saved := path.read_text().strip()):
        return saved
    # W&B's own form of id (8 of a-z0-9); its generator moved between wandb versions.
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank_zero_only.rank == 0:
        write_text(path, new_id + "\n")
    return new_id


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(cfg: DictConfig, logger_cfg: DictConfig) -> Logger:
    """The run's WandbLogger, named, tagged and grouped (see `run_name`, `run_tags`,
    `sweep_group`), continuing its W&B run when it resumes; offline (never prompting) when no
    credentials are found. The run configuration is logged once, here."""
    kwargs = OmegaConf.to_container(logger_cfg, resolve=True)
    kwargs["group"] = kwargs.get("group") or sweep_group()
    kwargs["name"] = kwargs.get("name") or run_name(cfg)
    kwargs["tags"] = run_tags(cfg) + list(kwargs.get("tags") or [])
    kwargs["id"] = run_id(Path(cfg.paths.output_dir), resume=bool(cfg.get("ckpt_path")))
    kwargs["resume"] = "allow"
    if (
        not kwargs.get("offline")
        and os.environ.get("WANDB_MODE") != "offline"
        and not wandb_has_credentials()
    ):
        kwargs["offline"] = True
        log.warning(
            "W&B: no credentials (WANDB_API_KEY or `wandb login`) found, logging offline under "
            "%s/wandb; upload later with `wandb sync %s/wandb/offline-run-*`, or use logger=csv.",
            cfg.paths.output_dir,
            cfg.paths.output_dir,
        )
    logger = instantiate({**kwargs, "_convert_": "all"})
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def wandb_run_of(loggers: list[Logger]) -> Any | None:
    """The W&B run of the first WandbLogger among `loggers` (on rank 0), else None."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            return logger.experiment
    return None


@rank_zero_only
def log_run_summary(trainer: pl.Trainer, record: dict[str, Any]) -> None:
    """Puts what metrics.json records into the W&B run's summary, where runs are compared:
    best val Dice and its epoch, the test metrics, parameters, FLOPs, wall time, git commit,
    device and the split used. Does nothing without a WandbLogger."""
    run = wandb_run_of(trainer.loggers)
    if run is None:
        return
    summary = {
        "best/val_dice": record.get("best_val_dice"),
        "best/epoch": _epoch_of(record.get("best_checkpoint")),
        **{f"test/{key}": value for key, value in (record.get("test") or {}).items()},
        "params": record.get("params"),
        "flops": record.get("flops"),
        **{
            key: record.get(key)
            for key in (
                "status",
                "debug",
                "epochs",
                "wall_time_s",
                "git_commit",
                "device",
                "trainer_precision",
                "split",
                "fold",
                "image_size",
            )
        },
    }
    run.summary.update(summary)


def _epoch_of(checkpoint: str | None) -> int | None:
    # Memory-mapped: reads the epoch without loading the weights.
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    saved = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    return saved.get("epoch")


def finish_wandb() -> None:
    """Closes the W&B run, if any: each multirun job is its own run, closed before the next."""
    wandb = sys.modules.get("wandb")  # never imported: no run to close
    if wandb is not None and wandb.run is not None:
        wandb.finish()
