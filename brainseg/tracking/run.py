"""A training run in Weights & Biases: its identity (name, tags, group, id kept across resumes),
the logger that opens it (`wandb_logger`, the `_target_` of `conf/logger/wandb.yaml`), its
summary, and failures that name their cause.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from brainseg.atomic import write_text
from brainseg.checkpoints import load_checkpoint_file
from brainseg.config import uses_cuda
from brainseg.rundir import run_name

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


def run_tags(identity: Mapping[str, Any]) -> list[str]:
    """`key:value` tags to filter and group runs by in W&B, from the run's settings as they
    will run on this machine (precision and device resolved).

    Args:
        identity: model, seed, fold, precision, accelerator and pretrained (the model's own
            switch), as `conf/logger/wandb.yaml` passes them.
    """
    fold = identity.get("fold")
    preset = experiment_preset()
    tags = [
        f"model:{identity['model']}",
        f"seed:{identity['seed']}",
        f"precision:{identity.get('precision')}",
        f"device:{_device_of(str(identity.get('accelerator') or 'auto'))}",
        # the network's own switch: a U-Net has no backbone to initialise, whatever `pretrained`
        "pretrained" if identity.get("pretrained") else "scratch",
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


def wandb_logger(identity: Mapping[str, Any], **kwargs: Any) -> Logger:
    """The run's WandbLogger, named, tagged and grouped (see `run_name`, `run_tags`,
    `sweep_group`), continuing its W&B run when it resumes; offline (never prompting) when no
    credentials are found. The W&B run is opened here, so that a failure names its cause.

    Args:
        identity: the run's model, seed, fold, precision, accelerator, pretrained, and
            resume (its ckpt_path), as `conf/logger/wandb.yaml` passes them.
        kwargs: WandbLogger's arguments; a null group, name or id is brainseg's.
    """
    kwargs["group"] = kwargs.get("group") or sweep_group()
    kwargs["name"] = kwargs.get("name") or run_name(
        identity["model"], identity["seed"], identity.get("fold")
    )
    kwargs["tags"] = run_tags(identity) + list(kwargs.get("tags") or [])
    kwargs["id"] = run_id(Path(kwargs["save_dir"]), resume=bool(identity.get("resume")))
    kwargs["resume"] = "allow"
    offline = kwargs.get("offline") or os.environ.get("WANDB_MODE") in ("offline", "disabled")
    if not offline and not wandb_has_credentials():
        kwargs["offline"] = offline = True
        log.warning(
            "W&B: no credentials (WANDB_API_KEY or `wandb login`) found, logging offline under "
            "%s/wandb; upload later with `wandb sync %s/wandb/offline-run-*`, or use logger=csv.",
            kwargs["save_dir"],
            kwargs["save_dir"],
        )
    if not offline and rank_zero_only.rank == 0:
        check_reachable()
    logger = EpochsFromOne(**kwargs)
    try:
        logger.experiment  # noqa: B018  (opens the W&B run: wandb.init)
    except Exception as error:  # wandb's CommError, AuthenticationError, UsageError, ...
        raise RuntimeError(wandb_failure(error)) from error
    return logger


class EpochsFromOne(WandbLogger):
    """A WandbLogger whose `epoch` counts from 1, as the report's figures and tables, the run's
    closing line and the W&B summary's `best/epoch` do. Lightning counts from 0; its own CSV log
    (`csv/metrics.csv`) keeps that count, as the raw record. After fitting, Lightning's count
    is the number of epochs done, which is the last epoch's number from 1: the test stage's
    metrics keep it."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        testing = any(key.startswith("test/") for key in metrics)
        if "epoch" in metrics and not testing:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        super().log_metrics(metrics, step)


def base_url() -> str:
    """The W&B server this process talks to (WANDB_BASE_URL, else W&B's cloud)."""
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def check_reachable(timeout_s: float = 5.0) -> None:
    """A RuntimeError, at once, when W&B's server cannot be reached: wandb itself retries for
    about 100 s before it fails with `CommError ... context deadline exceeded`."""
    url = urlsplit(base_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise RuntimeError(wandb_failure(error)) from error


def wandb_failure(error: BaseException) -> str:
    """What went wrong with W&B, from its error, and what to do about it."""
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    lowered = text.lower()
    offline = (
        "or log offline with WANDB_MODE=offline (upload later with `wandb sync`), or without "
        "W&B with logger=csv"
    )
    if any(s in lowered for s in ("not logged in", "401", "unauthorized", "api key", "403")):
        return (
            f"W&B refused the API key ({text}): run `wandb login --relogin`, or set "
            f"WANDB_API_KEY to a valid key; {offline}"
        )
    network = ("connect", "timed out", "timeout", "deadline", "resolve", "unreachable", "refused")
    if isinstance(error, OSError) or any(s in lowered for s in network):
        return f"W&B's server {base_url()} cannot be reached ({text}): check the network; {offline}"
    return f"W&B could not start the run ({text}); {offline}"


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
    # Memory-mapped: reads the epoch without loading the weights; never runs the file's code.
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    saved = load_checkpoint_file(checkpoint, map_location="cpu", mmap=True)
    return None if saved.get("epoch") is None else saved["epoch"] + 1  # counted from 1


def finish_wandb() -> None:
    """Closes the W&B run, if any: each multirun job is its own run, closed before the next."""
    wandb = sys.modules.get("wandb")  # never imported: no run to close
    if wandb is not None and wandb.run is not None:
        wandb.finish()
