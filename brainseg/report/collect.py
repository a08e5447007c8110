"""Reads a Hydra sweep: the jobs it expected, and which of them finished, failed or never ran.

A job counts as a result only when its metrics.json and per_image.csv are both readable and its
metrics.json says `"status": "ok"`; every other job is listed with the reason, never averaged.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from brainseg.data.sources import natural_key

log = logging.getLogger(__name__)

# Sweep keys that repeat a comparison rather than define what is compared.
REPEAT_KEYS = ("seed", "data.fold")
MODEL_KEY = "model"
# per_image.csv columns the report reads, and those that must hold a value on every row.
PER_IMAGE_COLUMNS = ("id", "pid", "label", "dice")
PER_IMAGE_FILLED = ("id", "label", "dice")
# Statuses brainseg.train records for runs that are no result, listed with their reason.
NOT_RESULTS = ("no_test", "no_tumor_test", "interrupted")


class UnreadableFile(Exception):
    """A job's file that exists but cannot be used; the message names it and says why."""


@dataclass
class Run:
    """One job of a sweep.

    Attributes:
        status: "ok" (metrics.json and per_image.csv readable), "debug" (a run without full
            training, as its metrics.json says), "no_test", "no_tumor_test" (no test set, or
            one without a tumor) and "interrupted" (SIGTERM, Ctrl-C) as its metrics.json says,
            "failed" (error.txt), "incomplete" (a job
            directory whose metrics.json or per_image.csv is missing or unreadable: still
            running, killed, or cut off while writing) or "missing" (no directory).
        variant: what the job compares: the model name, plus any other swept setting.
        overrides: the job's command-line overrides as {key: value}.
        error: why the job is not "ok", naming the file.
        per_image: the run's per_image.csv (one row per test slice), None when unusable.
    """

    job_dir: Path | None
    status: str
    model: str
    seed: int | None
    fold: int | None
    variant: str
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    per_image: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        fold = "" if self.fold is None else f" fold={self.fold}"
        return f"{self.variant} seed={self.seed}{fold}"

    @property
    def test(self) -> dict[str, float]:
        return self.metrics.get("test") or {}

    @property
    def split(self) -> str | None:
        """The split the run used ("patient" or "image"), as its metrics.json records it."""
        value = self.metrics.get("split")
        return None if value is None else str(value)

    @cached_property
    def history(self) -> pd.DataFrame | None:
        """Per-epoch log (csv/metrics.csv), one row per epoch: Lightning writes train and
        validation values of one epoch on separate rows. A resumed run's earlier log
        (csv/metrics-<time>.csv) comes first; the latest value of an epoch wins. None when
        there is none, or it cannot be read (a warning names the file)."""
        paths = sorted((self.job_dir / "csv").glob("metrics*.csv")) if self.job_dir else []
        if not paths:
            return None
        try:
            frame = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
        except (OSError, ValueError) as error:  # pandas' parser errors are ValueErrors
            log.warning(
                "%s: learning curve left out, its csv log is unreadable (%s)", self.name, error
            )
            return None
        if "epoch" not in frame or frame.empty:
            return None
        return frame.groupby("epoch").last().reset_index()


@dataclass
class Sweep:
    """Every job of a sweep, expected or found, whatever its status."""

    root: Path
    runs: list[Run]
    multirun: dict[str, Any]
    include_debug: bool = False

    @property
    def ok(self) -> list[Run]:
        return [run for run in self.runs if run.status == "ok"]

    @property
    def used(self) -> list[Run]:
        """The runs the table and statistics average: "ok" ones, plus "debug" ones when
        `include_debug`."""
        wanted = ("ok", "debug") if self.include_debug else ("ok",)
        return [run for run in self.runs if run.status in wanted]

    @property
    def debug(self) -> list[Run]:
        return [run for run in self.runs if run.status == "debug"]

    @property
    def problems(self) -> list[Run]:
        """Missing, failed and incomplete jobs (debug runs are listed apart)."""
        return [run for run in self.runs if run.status not in ("ok", "debug")]

    @property
    def splits(self) -> dict[str, list[Run]]:
        """The split of the used runs -> those runs ("not recorded" for older records)."""
        splits: dict[str, list[Run]] = {}
        for run in self.used:
            splits.setdefault(run.split or "not recorded", []).append(run)
        return splits

    @property
    def variants(self) -> list[str]:
        """The compared variants in sweep order, those without a finished run included."""
        return list(dict.fromkeys(run.variant for run in self.runs))

    def runs_of(self, variant: str) -> list[Run]:
        return [run for run in self.used if run.variant == variant]

    @property
    def wandb_config(self) -> dict[str, Any] | None:
        """The `logger.wandb` config of the first job that used W&B, else None."""
        for run in self.runs:
            logger = run.config.get("logger") or {}
            if isinstance(logger, dict) and logger.get("wandb"):
                return logger["wandb"]
        return None

    @property
    def group(self) -> str:
        """The W&B group of the sweep, named as brainseg.train names it: the sweep directory as
        configured (hydra.sweep.dir), with path separators replaced."""
        return str(Path(_sweep_dir_setting(self))).replace(os.sep, "_")


def load_sweep(sweep_dir: str | os.PathLike, include_debug: bool = False) -> Sweep:
    """Reads every job directory of `sweep_dir` and lines them up with the jobs the sweep's
    `multirun.yaml` expected, so that missing, failed and incomplete jobs are visible.

    Args:
        sweep_dir: the folder a multirun wrote.
        include_debug: average debug runs (no full training) with the others.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"sweep directory {root} does not exist; pass the folder a multirun wrote, "
            "e.g. multirun/<date>/<time>"
        )
    multirun_path = root / "multirun.yaml"
    multirun = _load_yaml(multirun_path) if multirun_path.is_file() else {}
    sweep_keys, expected = expected_jobs(_task_overrides(multirun))
    found = [_read_job(d, sweep_keys) for d in tqdm(_job_dirs(root), desc="runs", unit="run")]
    runs = _match(found, expected, sweep_keys, multirun)
    if not runs:
        raise FileNotFoundError(
            f"{root} holds no job directories (with .hydra/, metrics.json or error.txt) and no "
            "multirun.yaml; pass the folder of a `python -m brainseg.train -m ...` sweep"
        )
    return Sweep(root=root, runs=runs, multirun=multirun, include_debug=include_debug)


def expected_jobs(task_overrides: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The swept keys and one {key: value} per job, in the order Hydra's basic sweeper runs them.

    Example: ["model=unet,fpn", "seed=range(2)"] -> (["model", "seed"], 4 jobs).
    """
    if not task_overrides:
        return [], []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    sweeps = [o for o in parsed if o.is_sweep_override()]
    keys = [o.get_key_element() for o in sweeps]
    values = [list(o.sweep_string_iterator()) for o in sweeps]
    return keys, [dict(zip(keys, combo, strict=False)) for combo in itertools.product(*values)]


def _task_overrides(multirun: dict[str, Any]) -> list[str]:
    return list(((multirun.get("hydra") or {}).get("overrides") or {}).get("task") or [])


def _sweep_dir_setting(sweep: Sweep) -> str:
    """hydra.sweep.dir as the jobs saw it. Hydra saves it unresolved when it holds ${now:...}:
    then its last as many components of the sweep's path as the setting has stand in for it
    (`multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}` -> `multirun/<date>/<time>`)."""
    value = str(((sweep.multirun.get("hydra") or {}).get("sweep") or {}).get("dir") or "")
    if value and "${" not in value:
        return value
    if value and not Path(value).is_absolute():
        depth = len(Path(value).parts)
        return str(Path(*sweep.root.resolve().parts[-depth:]))
    return str(sweep.root)


def _job_dirs(root: Path) -> list[Path]:
    if (root / "metrics.json").is_file() or (root / ".hydra").is_dir():
        return [root]  # a single run directory
    markers = (".hydra", "metrics.json", "error.txt")
    dirs = [d for d in root.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)]
    return sorted(dirs, key=lambda d: natural_key(d.name))


def _read_job(job_dir: Path, sweep_keys: list[str]) -> Run:
    unreadable: list[str] = []
    config = _read_optional(job_dir / ".hydra" / "config.yaml", _load_yaml, unreadable)
    overrides = _read_optional(job_dir / ".hydra" / "overrides.yaml", _parse_overrides, unreadable)
    status, error, metrics, per_image = _job_state(job_dir)
    if unreadable and status in ("ok", "debug"):
        status, error, per_image = "incomplete", "; ".join(unreadable), None
    model = str(
        metrics.get("model")
        or (config.get("model") or {}).get("name")
        or overrides.get(MODEL_KEY)
        or "model"
    )
    seed = _int_or_none(metrics.get("seed", config.get("seed", overrides.get("seed"))))
    fold = metrics.get("fold", (config.get("data") or {}).get("fold", overrides.get("data.fold")))
    return Run(
        job_dir=job_dir,
        status=status,
        model=model,
        seed=seed,
        fold=_int_or_none(fold),
        variant=_variant(model, overrides, sweep_keys),
        overrides=overrides,
        metrics=metrics,
        config=config,
        error=error,
        per_image=per_image,
    )


def _job_state(job_dir: Path) -> tuple[str, str, dict[str, Any], pd.DataFrame | None]:
    """(status, why it is not "ok", metrics.json, per_image.csv) of a job directory."""
    error_txt = job_dir / "error.txt"
    try:
        metrics = _read_metrics(job_dir / "metrics.json")
    except UnreadableFile as problem:
        if error_txt.is_file():
            return "failed", _exception_line(error_txt.read_text(errors="replace")), {}, None
        return "incomplete", str(problem), {}, None
    status = str(metrics.get("status", "ok"))
    if status in NOT_RESULTS:
        return status, str(metrics.get("reason") or "reason not recorded"), metrics, None
    if status not in ("ok", "debug"):
        return "failed", f"metrics.json says status {status!r}", metrics, None
    why = ""
    if status == "debug":
        why = f"no full training ({metrics.get('debug') or 'reason not recorded'})"
    try:
        per_image = _read_per_image(job_dir / "per_image.csv")
    except UnreadableFile as problem:
        return "incomplete", "; ".join(filter(None, [str(problem), why])), metrics, None
    return status, why, metrics, per_image


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UnreadableFile(f"{path.name} missing (and no error.txt): still running, or killed")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError included
        raise UnreadableFile(
            f"{path.name} unreadable ({type(error).__name__}: {error}); cut off while being "
            "written? rerun the job"
        ) from error
    if not isinstance(metrics, dict):
        raise UnreadableFile(f"{path.name} holds a {type(metrics).__name__}, not a run record")
    return metrics


def _read_per_image(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UnreadableFile(
            f"{path.name} missing: the job did not test (test=false), or was killed before "
            "writing it"
        )
    try:
        frame = pd.read_csv(path, dtype={"id": str, "pid": str})
    except (OSError, ValueError) as error:  # pandas' EmptyDataError and ParserError included
        raise UnreadableFile(f"{path.name} unreadable ({type(error).__name__}: {error})") from error
    absent = [column for column in PER_IMAGE_COLUMNS if column not in frame]
    if absent:
        raise UnreadableFile(f"{path.name} lacks the column(s) {', '.join(absent)}")
    if frame.empty:
        raise UnreadableFile(f"{path.name} has no rows")
    # Only pid (unknown patients) and, in older records, precision and recall may be blank:
    # a blank elsewhere is a row cut off while being written.
    filled = [c for c in frame.columns if c not in ("pid", "precision", "recall")]
    holes = frame.index[frame[filled].isna().any(axis=1)]
    if len(holes):
        raise UnreadableFile(
            f"{path.name} has blank values on {len(holes)} row(s), first data row "
            f"{holes[0] + 1}; cut off while being written? rerun the job"
        )
    frame["pid"] = frame["pid"].fillna("")
    return frame


def _read_optional(
    path: Path, read: Callable[[Path], dict[str, Any]], unreadable: list[str]
) -> dict[str, Any]:
    """`read(path)`, or {} with the reason appended to `unreadable`."""
    try:
        return read(path)
    except Exception as error:  # YAML, OmegaConf and Hydra parsers: one bad job never aborts
        unreadable.append(f"{path.parent.name}/{path.name} unreadable ({type(error).__name__})")
        return {}


def _match(
    found: list[Run],
    expected: list[dict[str, str]],
    sweep_keys: list[str],
    multirun: dict[str, Any],
) -> list[Run]:
    """Found jobs, plus a "missing" run for every expected combination no job directory has."""
    runs = list(found)
    seen = [{k: run.overrides.get(k) for k in sweep_keys} for run in found]
    model_names = {run.overrides.get(MODEL_KEY): run.model for run in found}
    for combo in expected:
        if combo in seen:
            continue
        group = combo.get(MODEL_KEY)
        model = model_names.get(group) or group or str((multirun.get("model") or {}).get("name"))
        runs.append(
            Run(
                job_dir=None,
                status="missing",
                model=model,
                seed=_int_or_none(combo.get("seed", multirun.get("seed"))),
                fold=_int_or_none(combo.get("data.fold", (multirun.get("data") or {}).get("fold"))),
                variant=_variant(model, combo, sweep_keys),
                overrides=combo,
                error="no job directory: the job never started (or was deleted)",
            )
        )
    return runs


def _variant(model: str, overrides: dict[str, str], sweep_keys: list[str]) -> str:
    extra = [
        f"{k}={overrides[k]}"
        for k in sweep_keys
        if k not in (MODEL_KEY, *REPEAT_KEYS) and k in overrides
    ]
    return " ".join([model, *extra])


def _exception_line(traceback: str) -> str:
    """The `Type: message` line of a traceback: its last line that is not indented."""
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    flush = [line for line in lines if not line[0].isspace()]
    return (flush or lines or ["error.txt is empty"])[-1].strip()


def _parse_overrides(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    items = OmegaConf.to_container(OmegaConf.load(path)) or []
    parsed = OverridesParser.create().parse_overrides([str(i) for i in items])
    return {o.get_key_element(): o.get_value_element_as_str() for o in parsed}


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    # Unresolved: interpolations such as ${now:...} or ${hydra:...} only resolve inside Hydra.
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "null":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
