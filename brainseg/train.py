"""Train, test and record one run: `python -m brainseg.train [overrides]`.

python -m brainseg.train -m model=unet,fpn seed=range(5)    # the study's sweep
python -m brainseg.train experiment=smoke                   # about 10 s, synthetic data
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from brainseg.config import CONF_DIR, check_settings, prepare_run_config  # registers resolvers
from brainseg.identity import (
    content_hash,
    hash_test_set,
    is_execution_key,
    run_settings,
    variant_key,
)
from brainseg.rundir import EarlierRunError, earlier_run, finished_record
from brainseg.summary import run_line

# torch, Lightning and W&B are imported where they are used, after Hydra composed the
# config: --help, tab completion and a mistyped override then answer in a second, not ten.
if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import Logger

    from brainseg.callbacks import WallClock

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


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """The objects of a config group of named entries (`logger`, `callbacks`), in order; an
    entry set to null is switched off."""
    return [instantiate(entry) for entry in (group or {}).values() if entry]


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """A CSV log in every run (`csv/metrics.csv`), plus the configured loggers, which receive
    the run's configuration once, with its `variant` (`brainseg.identity.variant_key`)."""
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities import rank_zero_only

    previous = output_dir / "csv" / "metrics.csv"
    if previous.is_file() and rank_zero_only.rank == 0:
        # Lightning's CSV logger deletes an existing log: keep a resumed run's earlier epochs.
        previous.rename(previous.with_name(f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
    configured = instantiate_group(cfg.get("logger"))
    if configured:
        variant = variant_key(resolved_settings(cfg))
        config = OmegaConf.to_container(cfg, resolve=True) | {"variant": variant}
        for logger in configured:
            logger.log_hyperparams(config)
    return [CSVLogger(save_dir=output_dir, name="", version="csv"), *configured]


def build_trainer(
    cfg: DictConfig, loggers: list[Logger], clock: WallClock | None = None
) -> pl.Trainer:
    from brainseg.callbacks import AtomicCheckpointIO

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks")) + ([clock] if clock else [])
    return instantiate(
        trainer_cfg,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(trust=bool(cfg.get("trust_checkpoint", False)))],
    )


def debug_reason(trainer_cfg: DictConfig, fit: bool = True) -> str | None:
    """Why a run's settings make it something other than a full training run (with `fit=False`:
    a full test of the checkpoint), or None."""
    if trainer_cfg.get("fast_dev_run"):
        return f"fast_dev_run={trainer_cfg.fast_dev_run}"
    if not fit:  # only the test stage runs: the training settings do not matter
        limit = trainer_cfg.get("limit_test_batches")
        return None if limit in (None, 1.0) else f"limit_test_batches={limit}"
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
    """The configuration of a `fit=false` run: the checkpoint's own run settings (data, model,
    loss, metrics, seed, trainer with its precision, runtime, timing, ...), except where this
    run writes and logs (`_FROM_THIS_RUN`), and every key the command line set, which wins.

    Args:
        cfg: the composed configuration of this run.
        saved: the resolved configuration saved in the checkpoint (`read_checkpoint`).
        overrides: the command line's overrides, e.g. `["data.fold=2", "trainer.devices=2"]`;
            a `debug=` choice counts as setting the keys of its file.
    """
    merged = cfg.copy()
    with open_dict(merged):
        for key, value in saved.items():
            if key not in _FROM_THIS_RUN:
                merged[key] = value
        for key in _FROM_THIS_RUN_NESTED:
            if OmegaConf.select(cfg, key) is not None:
                OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
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


# Where a fit=false run writes, logs and what it loads: this run's, never the checkpoint's run's.
# Every other key of the checkpoint's configuration is kept (docs/training.md lists them).
_FROM_THIS_RUN = ("paths", "logger", "callbacks", "ckpt_path", "fit", "test", "trust_checkpoint")
_FROM_THIS_RUN_NESTED = ("trainer.default_root_dir",)


def _overridden_keys(overrides: list[str]) -> list[str]:
    """The config keys (`data.fold`) or groups (`data`) that command-line overrides set; for
    `debug=<name>`, the keys its file sets (`trainer.limit_test_batches`, ...)."""
    keys = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "debug" and value not in ("", "null"):
            keys += _keys_of_preset(CONF_DIR / "debug" / f"{value}.yaml")
        elif not key.startswith("hydra") and key not in ("experiment", "debug"):
            keys.append(key.replace("/", "."))
    return keys


def _keys_of_preset(path: Path) -> list[str]:
    """`section.key` for each key a `# @package _global_` preset file sets (`trainer.profiler`),
    `section` for a top-level value."""
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    keys = []
    for section, value in content.items():
        if section == "defaults":
            continue
        keys += [f"{section}.{k}" for k in value] if isinstance(value, dict) else [section]
    return keys


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fits the configured network, tests its best checkpoint and writes the run's records.

    Writes into `cfg.paths.output_dir`: `metrics.json`, `per_image.csv`, `split.csv`,
    `checkpoints/{best,last}.ckpt` and `csv/metrics.csv` (per-epoch log). The record's status
    is "ok" only for a fully trained run tested on slices with a tumor: "debug" for runs whose
    settings stop short of full training (fast_dev_run, limited batches, ...), "no_test" and
    "no_tumor_test" for runs without a test set, or whose test set has no tumor, "interrupted"
    for a run cut by SIGTERM or Ctrl-C (which then exits with 128 + the signal's number).
    With `fit=false` only tests `ckpt_path`'s network, configured by `config_of_checkpoint`
    (`overrides`: the command line's, which win over the checkpoint).

    A fitting run without `ckpt_path` whose directory holds an earlier run continues it (see
    `brainseg.rundir.earlier_run`): returns a finished run's record untouched, resumes a cut
    one from its last checkpoint, and refuses anything else.

    Returns:
        The content of `metrics.json`.
    """
    import pytorch_lightning as pl
    import torch

    from brainseg.atomic import write_csv, write_json
    from brainseg.callbacks import WallClock
    from brainseg.models import check_data_fits
    from brainseg.module import build_module, read_checkpoint
    from brainseg.tracking.run import log_run_summary

    # Every check that needs no data before any data is cached or downloaded.
    check_settings(cfg)
    check_objective(cfg)
    clock = WallClock()
    commit = git_commit()
    fit = cfg.get("fit", True)
    if fit and not cfg.get("ckpt_path"):
        earlier = earlier_run(cfg)
        if isinstance(earlier, dict):
            return earlier
        if earlier is not None:
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.ckpt_path = str(earlier)
    elif not fit and finished_record(Path(cfg.paths.output_dir)) is not None:
        raise EarlierRunError(
            f"{cfg.paths.output_dir} holds a finished run: test elsewhere (another hydra.run.dir)"
        )
    trust = bool(cfg.get("trust_checkpoint", False))
    checkpoint = read_checkpoint(cfg.ckpt_path, trust=trust) if cfg.get("ckpt_path") else None
    if not fit:
        if checkpoint is None:
            raise ValueError(
                "fit=false tests a trained network: give ckpt_path=<run_dir>/checkpoints/best.ckpt"
            )
        cfg = config_of_checkpoint(cfg, checkpoint["hyper_parameters"]["config"], overrides)
    del checkpoint
    prepare_run_config(cfg)  # absolute paths, offline
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.runtime.matmul_precision)

    if "ddp" in str(cfg.trainer.get("strategy", "")):
        pin_ddp_workers_to_this_job()
    datamodule = instantiate(cfg.data)
    # A resumed or tested checkpoint brings its own weights: none are fetched for it.
    module = build_module(cfg, load_pretrained=not cfg.get("ckpt_path"))
    data = cfg.data
    check_data_fits(
        module.net, cfg.model.name, datamodule.image_size, data.in_channels, data.mean, data.std
    )
    loggers = build_loggers(cfg, output_dir)
    trainer = build_trainer(cfg, loggers, clock)

    try:
        if fit:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            checkpoints = trainer.checkpoint_callback
            best = checkpoints.best_model_path if checkpoints else ""
        else:
            best = str(cfg.ckpt_path)
        if trainer.is_global_zero:
            datamodule.write_split(output_dir / "split.csv")
        results: dict[str, Any] = {}
        test_slices = datamodule.subset_sizes()["test"]
        if cfg.get("test", True) and test_slices:
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
            results = {
                key.removeprefix("test/"): float(value)
                for key, value in trainer.callback_metrics.items()
                if key.startswith("test/")
            }
            if getattr(module, "inference_path", None):  # which batch-1 path inference_ms timed
                results["inference_path"] = module.inference_path
    except SystemExit as stop:  # Lightning's SIGTERMException, and its exit on Ctrl-C
        signal_number = _interrupting_signal(stop)
        if signal_number is None:
            raise
        _record_interruption(cfg, trainer, output_dir, signal_number, clock, commit)
        raise RunInterrupted(128 + signal_number) from stop
    debug = debug_reason(cfg.trainer, fit=fit)
    if debug is None and fit and trainer.current_epoch < trainer.max_epochs:
        debug = f"stopped after {trainer.current_epoch} of {trainer.max_epochs} epochs"
    status, reason = _status(cfg, datamodule, test_slices, debug)
    settings = resolved_settings(cfg)
    record = {
        # Only "ok" runs are results: the report lists the others with the reason.
        "status": status,
        "reason": reason,
        "debug": debug,
        "model": cfg.model.get("name"),
        "seed": int(cfg.seed),
        "fold": cfg.data.get("fold"),
        "split": datamodule.split_mode,  # patient or image: what was used, never auto
        "image_size": cfg.data.get("image_size"),
        "params": sum(p.numel() for p in module.net.parameters()),
        "flops": _flops_or_none(module.net, datamodule.image_size),
        "epochs": trainer.current_epoch if fit else None,
        "trainer_precision": str(trainer.precision),
        "device": _device_name(trainer.strategy.root_device),
        "wall_time_s": clock.elapsed(),  # a resumed run's earlier part included
        "git_commit": commit,
        "best_checkpoint": best or None,
        "best_val_dice": _float_or_none(
            getattr(trainer.checkpoint_callback, "best_model_score", None)
        ),
        # What a sweeper optimises: a validation value, never a test one (see `objective`).
        "objective": _objective(cfg, trainer) if fit else None,
        "test": results,
        # The test set's reliability diagram (pixel counts per probability bin), for the report.
        "reliability": getattr(module, "reliability", None),
        # What the run is and what it was tested on: the report groups and pairs runs by these.
        "settings": settings,
        "variant": variant_key(settings),
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
    from brainseg.tracking.run import experiment_preset

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


class RunInterrupted(SystemExit):
    """A run cut by a signal: the process exits with 128 + the signal's number (143 for
    SIGTERM, 130 for Ctrl-C), as a shell reports a process the signal ended."""


def _interrupting_signal(stop: SystemExit) -> int | None:
    """The signal behind Lightning's exit, or None for any other SystemExit."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(stop, SIGTERMException):
        return signal.SIGTERM
    if isinstance(stop.__context__, KeyboardInterrupt):  # Lightning's sys.exit(1) on Ctrl-C
        return signal.SIGINT
    return None


def _record_interruption(
    cfg: DictConfig,
    trainer: pl.Trainer,
    output_dir: Path,
    signal_number: int,
    clock: WallClock,
    commit: str | None,
) -> None:
    reason = (
        f"{signal.Signals(signal_number).name} during {_stage(trainer)}, epoch "
        f"{trainer.current_epoch}; run it again into {output_dir} (the same sweep command, or "
        f"hydra.run.dir={output_dir}) to resume from checkpoints/last.ckpt"
    )
    from brainseg.atomic import write_json

    log.error("interrupted: %s", reason)
    if trainer.is_global_zero:
        record = {
            "status": "interrupted",
            "reason": reason,
            "model": cfg.model.get("name"),
            "seed": int(cfg.seed),
            "fold": cfg.data.get("fold"),
            "epochs": trainer.current_epoch,
            "wall_time_s": clock.elapsed(),
            "git_commit": commit,
        }
        write_json(output_dir / "metrics.json", record)


def _stage(trainer: pl.Trainer) -> str:
    # Lightning has reset `state.stage` by now; `state.fn` still says what was running.
    return trainer.state.fn.value if trainer.state.fn else "the run"


def _status(
    cfg: DictConfig, datamodule: Any, test_slices: int, debug: str | None
) -> tuple[str, str | None]:
    """(status, why it is not "ok") of a run that ended: a run without a test set, or whose
    test set has no tumor, is no result whatever its training (a network that predicts nothing
    scores Dice 1 on tumor-free slices)."""
    if not cfg.get("test", True):
        return "no_test", "test=false: the run was not tested"
    if not test_slices:
        return "no_test", f"the test set is empty (data.fractions={list(cfg.data.fractions)})"
    if not datamodule.tumor_slices("test"):
        return "no_tumor_test", (
            f"none of the {test_slices} test slices has a tumor: Dice, precision, recall and "
            "lesion recall only count false positives there"
        )
    if debug is not None:
        return "debug", f"no full training ({debug})"
    return "ok", None


def check_objective(cfg: DictConfig) -> None:
    """`optimized_metric` must be a validation metric that a checkpoint callback monitors: its
    best score is the objective, and that callback's best checkpoint is the one tested."""
    metric = cfg.get("optimized_metric")
    if metric is None:
        return
    if not str(metric).startswith("val/"):
        raise ValueError(
            f"optimized_metric={metric!r}: a sweeper optimises a validation metric (val/...), "
            "never a test or training one; e.g. optimized_metric=val/dice"
        )
    monitors = {
        c.get("monitor")
        for c in (cfg.get("callbacks") or {}).values()
        if c and str(c.get("_target_", "")).endswith("ModelCheckpoint") and c.get("monitor")
    }
    if metric not in monitors:
        raise ValueError(
            f"optimized_metric={metric} is monitored by no checkpoint callback (monitored: "
            f"{', '.join(sorted(monitors)) or 'none'}): set callbacks.best_checkpoint.monitor="
            f"{metric} (and its mode), which also chooses the checkpoint that is tested"
        )


def _objective(cfg: DictConfig, trainer: pl.Trainer) -> dict[str, Any] | None:
    metric = cfg.get("optimized_metric")
    if metric is None:
        return None
    callback = next(c for c in trainer.checkpoint_callbacks if c.monitor == metric)
    return {"metric": metric, "value": _float_or_none(callback.best_model_score)}


def recorded_objective(record: dict[str, Any], metric: str | None) -> float | None:
    """The objective `metric` of a run's record (`val/dice`: its best val Dice), None for a run
    that did not fit (fit=false); a ValueError when the run recorded another objective."""
    if metric is None:
        return None
    if "objective" not in record:  # written before objectives were recorded
        if metric == "val/dice":
            return record.get("best_val_dice")
        raise ValueError(f"the run recorded no objective {metric}: run the sweep elsewhere")
    objective = record["objective"]
    if objective is None or objective.get("metric") == metric:
        return None if objective is None else objective.get("value")
    raise ValueError(
        f"the run recorded the objective {objective.get('metric')!r}, not optimized_metric="
        f"{metric}: run the sweep with optimized_metric={objective.get('metric')}, or elsewhere"
    )


def _device_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _flops_or_none(net: torch.nn.Module, size: int) -> int | None:
    # Counted once the run is over: a network the counter cannot trace must not fail it.
    from brainseg.models import count_flops

    try:
        return count_flops(net, size)
    except Exception as error:  # whatever the traced operators raise
        log.warning("FLOPs not counted (%s: %s)", type(error).__name__, error)
        return None


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# What Lightning's DDP launcher sets in the launching process's own environment.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _end_distributed(env_before: dict[str, str | None]) -> None:
    # The next job of a multirun sweep must start its own DDP workers: with this job's process
    # group, or LOCAL_RANK left in the environment, it would wait for ranks that have exited.
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from brainseg.quiet import mute_known_warnings
    from brainseg.tracking.run import finish_wandb

    mute_known_warnings()
    env_before = {key: os.environ.get(key) for key in _DDP_ENV}
    try:
        record = train(cfg, HydraConfig.get().overrides.task)
    except EarlierRunError:
        raise  # about a run that is not this one's to record
    except BaseException:
        error_file = Path(cfg.paths.output_dir) / "error.txt"
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(traceback.format_exc())
        raise
    finally:
        finish_wandb()
        _end_distributed(env_before)
    print(run_line(record, Path(cfg.paths.output_dir).resolve()), flush=True)
    # The sweeper's objective: a validation value (`optimized_metric`), never a test metric.
    return recorded_objective(record, cfg.get("optimized_metric"))


if __name__ == "__main__":
    # Call the importable copy of `main`: launchers that pickle the task function (submitit)
    # then pickle a reference to brainseg.train.main instead of this __main__ module's globals.
    from brainseg.train import main as importable_main

    importable_main()
