"""Reads a Hydra sweep: the jobs it expected, and which of them finished, failed or never ran."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from brainseg.data.sources import natural_key

# Sweep keys that repeat a comparison rather than define what is compared.
REPEAT_KEYS = ("seed", "data.fold")
MODEL_KEY = "model"


@dataclass
class Run:
    """One job of a sweep.

    Attributes:
        status: "ok" (metrics.json written), "failed" (error.txt), "incomplete" (a job
            directory without either: still running, or killed) or "missing" (no directory).
        variant: what the job compares: the model name, plus any other swept setting.
        overrides: the job's command-line overrides as {key: value}.
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

    @property
    def name(self) -> str:
        fold = "" if self.fold is None else f" fold={self.fold}"
        return f"{self.variant} seed={self.seed}{fold}"

    @property
    def test(self) -> dict[str, float]:
        return self.metrics.get("test") or {}

    @cached_property
    def per_image(self) -> pd.DataFrame | None:
        """The run's per_image.csv (one row per test slice), or None when it has none."""
        path = self.job_dir / "per_image.csv" if self.job_dir else None
        if path is None or not path.is_file():
            return None
        frame = pd.read_csv(path, dtype={"id": str, "pid": str})
        frame["pid"] = frame["pid"].fillna("")
        return frame

    @cached_property
    def history(self) -> pd.DataFrame | None:
        """Per-epoch log (csv/metrics.csv), one row per epoch: Lightning writes train and
        validation values of one epoch on separate rows. A resumed run's earlier log
        (csv/metrics-<time>.csv) comes first; the latest value of an epoch wins."""
        paths = sorted((self.job_dir / "csv").glob("metrics*.csv")) if self.job_dir else []
        if not paths:
            return None
        frame = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
        if "epoch" not in frame or frame.empty:
            return None
        return frame.groupby("epoch").last().reset_index()


@dataclass
class Sweep:
    """Every job of a sweep, expected or found, whatever its status."""

    root: Path
    runs: list[Run]
    multirun: dict[str, Any]

    @property
    def ok(self) -> list[Run]:
        return [run for run in self.runs if run.status == "ok"]

    @property
    def problems(self) -> list[Run]:
        return [run for run in self.runs if run.status != "ok"]

    @property
    def variants(self) -> list[str]:
        """The compared variants in sweep order, those without a finished run included."""
        return list(dict.fromkeys(run.variant for run in self.runs))

    def runs_of(self, variant: str) -> list[Run]:
        return [run for run in self.ok if run.variant == variant]

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


def load_sweep(sweep_dir: str | os.PathLike) -> Sweep:
    """Reads every job directory of `sweep_dir` and lines them up with the jobs the sweep's
    `multirun.yaml` expected, so that missing and failed jobs are visible."""
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
    return Sweep(root=root, runs=runs, multirun=multirun)


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
    config = _load_yaml(job_dir / ".hydra" / "config.yaml")
    overrides = _parse_overrides(job_dir / ".hydra" / "overrides.yaml")
    metrics: dict[str, Any] = {}
    error = ""
    if (job_dir / "metrics.json").is_file():
        metrics = json.loads((job_dir / "metrics.json").read_text())
        status = "ok" if metrics.get("status", "ok") == "ok" else "failed"
    elif (job_dir / "error.txt").is_file():
        status = "failed"
        error = _exception_line((job_dir / "error.txt").read_text(errors="replace"))
    else:
        status = "incomplete"
        error = "no metrics.json and no error.txt: still running, or killed"
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
    )


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
