"""What a run directory holds, and what a run does with an earlier run in its directory.

A sweep's job folders are named by what they run (`unet-seed0`, `fpn-seed1-fold2`), so that a
sweep run again into the same `hydra.sweep.dir` finds each job's earlier run: a finished one is
kept as it is and its recorded objective returned, a cut one resumes from its last checkpoint,
and anything else is refused with the command that continues (`earlier_run`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RECORD = "metrics.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Statuses of a run that ended (its record is final); "interrupted" runs resume instead.
FINISHED = ("ok", "debug", "no_test", "no_tumor_test")
# Settings that may differ between a finished run and the same job run again: where it ran,
# what it resumed from, where it logged.
_NOT_COMPARED = ("ckpt_path", "paths", "logger")
# Sweep keys that every job folder's name holds already.
_NAMED_KEYS = ("model", "seed", "data.fold")


class EarlierRunError(ValueError):
    """A run directory holds an earlier run that this run must not touch."""


def run_name(model: str, seed: Any, fold: Any = None) -> str:
    """`<model>-seed<s>`, plus `-fold<k>` with a fold: a run's name in its folder and in W&B."""
    name = f"{model}-seed{seed}"
    return name if fold is None else f"{name}-fold{fold}"


def job_name(*, _root_: DictConfig) -> str:
    """The folder of a sweep's job (`hydra.sweep.subdir`): `run_name`, then `-key=value` for
    every other key the sweep varies, e.g. `unet-seed0-optimizer.lr=1e-3`.

    The varied keys come from the sweep's `multirun.yaml`, which Hydra writes before the first
    job starts; without it the job's number is appended, so that no two jobs share a folder.
    """
    name = run_name(
        OmegaConf.select(_root_, "model.name"),
        OmegaConf.select(_root_, "seed"),
        OmegaConf.select(_root_, "data.fold"),
    )
    swept = _swept_keys(Path(str(OmegaConf.select(_root_, "hydra.sweep.dir"))) / "multirun.yaml")
    if swept is None:
        return f"{name}-job{OmegaConf.select(_root_, 'hydra.job.num')}"
    values = _override_values(list(OmegaConf.select(_root_, "hydra.overrides.task") or []))
    extra = [f"{key}={values[key]}" for key in swept if key in values and key not in _NAMED_KEYS]
    return "-".join([name, *(re.sub(r"[^\w.=+,-]", "_", item) for item in extra)])


def records_subdir(subdir: str, *, _root_: DictConfig) -> str | None:
    """Hydra's folder of the job's own records (`hydra.output_subdir`, `.hydra`), or None, so
    that Hydra writes none, where the job's folder holds a finished run: its records stay."""
    output_dir = OmegaConf.select(_root_, "hydra.runtime.output_dir")
    if output_dir and finished_record(Path(str(output_dir))) is not None:
        return None
    return subdir


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json, or None when it has none that can be read."""
    try:
        record = json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The record of the run that finished in `run_dir` (any status but "interrupted"), or
    None."""
    record = read_record(run_dir)
    if record is None or record.get("status", "ok") not in FINISHED:
        return None
    return record


def earlier_run(cfg: DictConfig) -> dict[str, Any] | Path | None:
    """What a fitting run without `ckpt_path` does with an earlier run in its directory.

    Returns:
        The finished run's record, to return instead of running again (same settings only);
        the earlier run's last checkpoint, to resume from; or None when there is no earlier run.

    Raises:
        EarlierRunError: the finished run had other settings, or the earlier run ended with no
            checkpoint to resume from; the message says how to continue.
    """
    run_dir = Path(cfg.paths.output_dir)
    finished = finished_record(run_dir)
    if finished is not None:
        differing = _differing_settings(cfg, run_dir / ".hydra" / "config.yaml")
        if differing:
            raise EarlierRunError(
                f"{run_dir} holds a finished run with other settings ({'; '.join(differing)}): "
                "it is kept; run this one elsewhere (another hydra.sweep.dir or hydra.run.dir)"
            )
        log.info("%s: already finished (status %s), kept as it is", run_dir, finished["status"])
        return finished
    if (run_dir / LAST_CHECKPOINT).is_file():
        log.warning("%s holds a run that did not finish: resuming it", run_dir)
        return run_dir / LAST_CHECKPOINT
    traces = [name for name in (RECORD, "error.txt", "checkpoints") if (run_dir / name).exists()]
    if traces:
        raise EarlierRunError(
            f"{run_dir} holds a run that did not finish ({', '.join(traces)}) and left no "
            f"{LAST_CHECKPOINT} to resume from: read {run_dir / 'error.txt'} if there is one, "
            f"then delete the folder (rm -r '{run_dir}') and run the same command again"
        )
    return None


def _differing_settings(cfg: DictConfig, saved_path: Path) -> list[str]:
    """`key: earlier -> now` for every setting that differs from the earlier run's (first 5)."""
    if not saved_path.is_file():
        return []  # a run written without Hydra: nothing to compare with
    try:
        saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False))
    except Exception:  # a YAML file that cannot be read cannot vouch for the run
        return [f"{saved_path} unreadable"]
    now = _flat(OmegaConf.to_container(cfg, resolve=False))
    keys = sorted(k for k in set(saved) | set(now) if k.split(".")[0] not in _NOT_COMPARED)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)][
        :5
    ]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        items: dict[str, Any] = {}
        for key, value in tree.items():
            items.update(_flat(value, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): tree}


def _swept_keys(multirun_path: Path) -> list[str] | None:
    """The keys a sweep varies (command-line sweeps and `hydra.sweeper.params`), in order."""
    try:
        multirun = OmegaConf.to_container(OmegaConf.load(multirun_path), resolve=False)
    except Exception:  # missing, or not written by this sweeper
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = multirun.get("hydra") or {}
    task = [str(o) for o in (hydra_cfg.get("overrides") or {}).get("task") or []]
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    parsed = OverridesParser.create().parse_overrides(task)
    keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys([*keys, *map(str, params)]))


def _override_values(overrides: list[str]) -> dict[str, str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return {o.get_key_element(): o.get_value_element_as_str() for o in parsed}


OmegaConf.register_new_resolver("brainseg.job_name", job_name, replace=True)
OmegaConf.register_new_resolver("brainseg.records_subdir", records_subdir, replace=True)
