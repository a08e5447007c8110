"""Train, test and record one run: `python -m brainseg.train [overrides]`.

python -m brainseg.train -m model=unet,fpn seed=range(5)    # the study's sweep
python -m brainseg.train experiment=smoke                   # seconds, synthetic data
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_only

from brainseg.atomic import write_csv, write_json
from brainseg.callbacks import AtomicCheckpointIO, WallClock
from brainseg.config import gpu_of_job  # noqa: F401  (registers the resolver)
from brainseg.identity import content_hash, hash_test_set, is_execution_key, run_settings
from brainseg.models.input_size import check_image_size
from brainseg.module import build_module, read_checkpoint
from brainseg.tracking import experiment_preset, finish_wandb, log_run_summary, wandb_logger

log = logging.getLogger(__name__)


@functools.cache
def git_commit() -> str | None:
    """The commit of the code that ran, with `-dirty` when it had uncommitted changes.

    Read once per process, at its first run: the jobs of a sweep run in one process, with the
    code it loaded then, whatever is committed while they run."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # an installed wheel: whatever git sees there is not this
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """A CSV log in every run (`csv/metrics.csv`), plus the configured loggers."""
    previous = output_dir / "csv" / "metrics.csv"
    if previous.is_file() and rank_zero_only.rank == 0:
        # Lightning's CSV logger deletes an existing log: keep a resumed run's earlier epochs.
        previous.rename(previous.with_name(f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
    loggers: list[Logger] = [CSVLogger(save_dir=output_dir, name="", version="csv")]
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            loggers.append(wandb_logger(cfg, logger_cfg))
        else:
            loggers.append(instantiate(logger_cfg))
    return loggers


def build_trainer(
    cfg: DictConfig, loggers: list[Logger], clock: WallClock | None = None
) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [clock] if clock else []
    return instantiate(
        trainer_cfg,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def debug_reason(trainer_cfg: DictConfig) -> str | None:
    """Why a run's settings make it something other than a full training run, or None."""
    if trainer_cfg.get("fast_dev_run"):
        return f"fast_dev_run={trainer_cfg.fast_dev_run}"
    if trainer_cfg.get("max_epochs") == 0:
        return "max_epochs=0"
    if trainer_cfg.get("max_steps", -1) not in (None, -1):
        return f"max_steps={trainer_cfg.max_steps}"
    if trainer_cfg.get("overfit_batches"):
        return f"overfit_batches={trainer_cfg.overfit_batches}"
    if trainer_cfg.get("profiler"):
        return "profiler"
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if trainer_cfg.get(key) not in (None, 1.0):
            return f"{key}={trainer_cfg[key]}"
    return None


def pin_ddp_workers_to_this_job() -> None:
    """Makes Lightning's DDP worker processes re-run this multirun job alone, in its directory.

    Lightning starts ranks 1..N-1 by re-running the command line with `hydra.run.dir` set to
    the parent's `hydra.run.dir`; under `-m` that command is the whole sweep, and the run
    directory is not the job's. This replaces both with the job's overrides and its directory.
    """
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def config_of_checkpoint(
    cfg: DictConfig, saved: dict[str, Any], overrides: list[str] | None = None
) -> DictConfig:
    """The configuration of a `fit=false` run: what the network is and was trained and evaluated
    on comes from its checkpoint (data, model, loss, metrics, seed), where and how it runs from
    `cfg` (trainer, runtime, logger, paths, ...), and every key the command line set from `cfg`.

    Args:
        cfg: the composed configuration of this run.
        saved: the resolved configuration saved in the checkpoint (`read_checkpoint`).
        overrides: the command line's overrides, e.g. `["data.fold=2", "trainer.devices=2"]`.
    """
    merged = cfg.copy()
    with open_dict(merged):
        for key in _FROM_CHECKPOINT:
            if key in saved:
                merged[key] = saved[key]
        for key in _overridden_keys(overrides or []):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    trained_at = saved.get("data", {}).get("image_size")
    if trained_at is not None and merged.data.image_size != trained_at:
        # e.g. data=folder brings the default preset's size with the new source
        log.warning(
            "testing at data.image_size=%s a network trained at %s; add data.image_size=%s "
            "to test at the training size",
            merged.data.image_size,
            trained_at,
            trained_at,
        )
    return merged


# What a checkpoint's network is: it keeps these from its training run when fit=false.
_FROM_CHECKPOINT = ("data", "model", "networks", "loss", "metrics", "seed", "pretrained")


def _overridden_keys(overrides: list[str]) -> list[str]:
    """The config keys (`data.fold`) or groups (`data`) that command-line overrides set."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not key.startswith("hydra") and key not in ("experiment", "debug"):
            keys.append(key.replace("/", "."))
    return keys


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fits the configured network, tests its best checkpoint and writes the run's records.

    Writes into `cfg.paths.output_dir`: `metrics.json`, `per_image.csv`, `split.csv`,
    `checkpoints/{best,last}.ckpt` and `csv/metrics.csv` (per-epoch log). Runs whose settings
    stop short of full training (fast_dev_run, limited batches, ...) are recorded with status
    "debug", not "ok". With `fit=false` only tests `ckpt_path`'s network, configured by
    `config_of_checkpoint` (`overrides`: the command line's, which win over the checkpoint).

    Returns:
        The content of `metrics.json`.
    """
    clock = WallClock()
    commit = git_commit()
    # Every check that needs no data before any data is cached or downloaded.
    checkpoint = read_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if not cfg.get("fit", True):
        if checkpoint is None:
            raise ValueError(
                "fit=false tests a trained network: give ckpt_path=<run_dir>/checkpoints/best.ckpt"
            )
        cfg = config_of_checkpoint(cfg, checkpoint["hyper_parameters"]["config"], overrides)
    del checkpoint
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.runtime.matmul_precision)

    if "ddp" in str(cfg.trainer.get("strategy", "")):
        pin_ddp_workers_to_this_job()
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    check_image_size(datamodule.image_size, getattr(module.net, "multiple", 1), cfg.model.name)
    trainer = build_trainer(cfg, build_loggers(cfg, output_dir), clock)

    if cfg.get("fit", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    else:
        best = str(cfg.ckpt_path)
    if trainer.is_global_zero:
        datamodule.write_split(output_dir / "split.csv")

    results: dict[str, Any] = {}
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        results = {
            key.removeprefix("test/"): float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("test/")
        }
    debug = debug_reason(cfg.trainer) if cfg.get("fit", True) else None
    if debug is None and cfg.get("fit", True) and trainer.current_epoch < trainer.max_epochs:
        debug = f"stopped after {trainer.current_epoch} of {trainer.max_epochs} epochs"
    record = {
        # Only "ok" runs are results: the report leaves the others out unless asked.
        "status": "ok" if debug is None else "debug",
        "debug": debug,
        "model": cfg.model.get("name"),
        "seed": int(cfg.seed),
        "fold": cfg.data.get("fold"),
        "split": datamodule.split_mode,  # patient or image: what was used, never auto
        "image_size": cfg.data.get("image_size"),
        "params": sum(p.numel() for p in module.net.parameters()),
        "epochs": trainer.current_epoch if cfg.get("fit", True) else None,
        "trainer_precision": str(trainer.precision),
        "device": _device_name(trainer.strategy.root_device),
        "wall_time_s": clock.elapsed(),  # a resumed run's earlier part included
        "git_commit": commit,
        "best_checkpoint": best or None,
        "best_val_dice": _float_or_none(
            getattr(trainer.checkpoint_callback, "best_model_score", None)
        ),
        "test": results,
        # The test set's reliability diagram (pixel counts per probability bin), for the report.
        "reliability": getattr(module, "reliability", None),
        # What the run is and what it was tested on: the report groups and pairs runs by these.
        "settings": resolved_settings(cfg),
        "protocol": protocol(cfg, datamodule, commit),
    }
    if trainer.is_global_zero:
        if module.test_rows:
            write_csv(output_dir / "per_image.csv", module.test_rows)
        write_json(output_dir / "metrics.json", record)
    log_run_summary(trainer, record)
    return record


def resolved_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings that define the run (`brainseg.identity.run_settings`), resolved. Keys that
    only say where it ran (paths: `${hydra:...}`) are left out before resolving."""
    kept = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        if OmegaConf.is_config(cfg[key])
        else cfg[key]
        for key in cfg
        if not is_execution_key(str(key))
    }
    return run_settings(kept)


def protocol(cfg: DictConfig, datamodule: Any, commit: str | None) -> dict[str, Any]:
    """The run's protocol fingerprint: what it was tested on, and how it was trained."""
    data, test = datamodule.data, datamodule.subsets == "test"
    return {
        "test_set": hash_test_set(data.ids[test], data.masks[test]),
        "test_slices": int(test.sum()),
        "data": content_hash(data.ids, data.masks, data.images),
        "source": type(datamodule.source).__name__,
        "image_size": datamodule.image_size,
        "split": datamodule.split_mode,
        "split_seed": datamodule.split_seed,
        "fold": datamodule.fold,
        "preset": experiment_preset(),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "code": commit,
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# What Lightning's DDP launcher sets in the launching process's own environment.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _end_distributed(env_before: dict[str, str | None]) -> None:
    # The next job of a multirun sweep must start its own DDP workers: with this job's process
    # group, or LOCAL_RANK left in the environment, it would wait for ranks that have exited.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    env_before = {key: os.environ.get(key) for key in _DDP_ENV}
    try:
        record = train(cfg, HydraConfig.get().overrides.task)
    except BaseException:
        error_file = Path(cfg.paths.output_dir) / "error.txt"
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(traceback.format_exc())
        raise
    finally:
        finish_wandb()
        _end_distributed(env_before)
    return record["test"].get("dice")


if __name__ == "__main__":
    # Call the importable copy of `main`: launchers that pickle the task function (submitit)
    # then pickle a reference to brainseg.train.main instead of this __main__ module's globals.
    from brainseg.train import main as importable_main

    importable_main()
