"""Reads sweeps: the jobs they expected, which finished, failed or never ran, and what each is.

A job counts as a result only when its metrics.json and per_image.csv are both readable and its
metrics.json says `"status": "ok"`; every other job is listed with the reason, never averaged.

Runs are grouped into variants by what they are (`brainseg.identity`): runs whose settings differ
in anything but the seed and the fold are never averaged together, whichever sweep or day they
come from. Several sweep folders read together (`load_sweeps`) make one comparison.
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
from brainseg.identity import differing_keys, is_execution_key, run_settings
from brainseg.metrics import registry

log = logging.getLogger(__name__)

# Sweep keys that repeat a comparison rather than define what is compared.
REPEAT_KEYS = ("seed", "data.fold")
# At most this many differing settings name a variant; more are cut with "...".
LABEL_KEYS = 3
MODEL_KEY = "model"
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
        source: the sweep folder the run was read from.
        label: the name given to that folder (`load_sweeps(labels=...)`), or "".
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
    source: Path | None = None
    label: str = ""

    @property
    def name(self) -> str:
        fold = "" if self.fold is None else f" fold={self.fold}"
        return f"{self.variant} seed={self.seed}{fold}"

    @property
    def where(self) -> str:
        """The run's folder, as `<sweep>/<job>`."""
        if self.job_dir is None:
            return f"{self.source.name if self.source else '?'}/(missing)"
        return f"{self.job_dir.parent.name}/{self.job_dir.name}"

    @cached_property
    def settings(self) -> dict[str, Any]:
        """What the run is (`brainseg.identity.run_settings`): as its metrics.json records it,
        else from its saved config (older runs), resolved where it can be read alone."""
        if isinstance(self.metrics.get("settings"), dict):
            return dict(self.metrics["settings"])
        settings = run_settings(_resolved(self.config)) if self.config else {}
        if self.metrics.get("trainer_precision"):  # what `auto` meant on the machine that ran
            settings["trainer.precision"] = str(self.metrics["trainer_precision"])
        return settings

    @property
    def protocol(self) -> dict[str, Any]:
        """The protocol fingerprint of metrics.json (`brainseg.train.protocol`); {} for older
        runs, which did not record one."""
        value = self.metrics.get("protocol")
        return value if isinstance(value, dict) else {}

    @property
    def identity(self) -> dict[str, Any]:
        """The settings, and the data set's content hash where recorded: runs of one variant
        agree on all of it."""
        data = self.protocol.get("data")
        return self.settings if data is None else {**self.settings, "protocol.data": data}

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
    # Where the report goes; None = <root>/report. A comparison of several folders names its own.
    out: Path | None = None
    name: str = ""
    allow_mixed: bool = False

    @property
    def report_dir(self) -> Path:
        return self.out if self.out is not None else self.root / "report"

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
        """The W&B group of the report: for one sweep, named as brainseg.train names it (the
        sweep directory as configured, hydra.sweep.dir, with path separators replaced); for a
        comparison of several, the comparison's name."""
        if self.name:
            return self.name
        return str(Path(_sweep_dir_setting(self))).replace(os.sep, "_")


def load_sweep(
    sweep_dir: str | os.PathLike, include_debug: bool = False, allow_mixed: bool = False
) -> Sweep:
    """Reads every job directory of `sweep_dir` and lines them up with the jobs the sweep's
    `multirun.yaml` expected, so that missing, failed and incomplete jobs are visible.

    Args:
        sweep_dir: the folder a multirun wrote.
        include_debug: average debug runs (no full training) with the others.
        allow_mixed: pair variants tested on different test sets (see `brainseg.report`).
    """
    return load_sweeps([sweep_dir], include_debug=include_debug, allow_mixed=allow_mixed)


def load_sweeps(
    sweep_dirs: list[str | os.PathLike],
    labels: dict[str, str] | None = None,
    include_debug: bool = False,
    out: str | os.PathLike | None = None,
    name: str = "",
    allow_mixed: bool = False,
) -> Sweep:
    """Reads several sweep folders, from any day or machine, as one comparison.

    Args:
        sweep_dirs: folders a multirun wrote (or single run folders, or archives).
        labels: {folder as given: label}; the runs of a labelled folder are named
            `<model> [<label>]`, and kept apart from runs of other folders.
        out: where the report goes; default `<folder>/report` for one folder, and
            `reports/<name>` for several.
        name: the comparison's name (its report folder, its W&B group); default the folders'
            names joined by `-vs-`.
    """
    labels = labels or {}
    runs: list[Run] = []
    multirun: dict[str, Any] = {}
    swept: list[str] = []
    for sweep_dir in sweep_dirs:
        root = Path(sweep_dir)
        found, keys, first = _read_folder(root)
        for run in found:
            run.source, run.label = root, labels.get(str(sweep_dir), "")
        runs += found
        swept += [k for k in keys if k not in swept]
        multirun = multirun or first
    unknown = set(labels) - {str(d) for d in sweep_dirs}
    if unknown:
        raise ValueError(f"--label names folders that are not compared: {', '.join(unknown)}")
    assign_variants(runs, swept)
    roots = [Path(d) for d in sweep_dirs]
    if len(roots) == 1:
        return Sweep(roots[0], runs, multirun, include_debug, out and Path(out), name, allow_mixed)
    name = name or "-vs-".join(root.resolve().name for root in roots)
    out = Path(out) if out else Path("reports") / name
    return Sweep(out, runs, multirun, include_debug, out, name, allow_mixed)


def _read_folder(root: Path) -> tuple[list[Run], list[str], dict[str, Any]]:
    """The runs of one sweep folder (found and missing), its swept keys, its multirun.yaml."""
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
    return runs, sweep_keys, multirun


def assign_variants(runs: list[Run], sweep_keys: list[str]) -> None:
    """Names each run's variant from what it is, across every folder compared.

    Runs that finished (or ran in debug) are grouped by model, folder label and identity
    (settings, data): they differ in nothing but seed and fold. A model with one group is named
    by the model alone; several are told apart by the swept overrides when those differ, else
    by the settings that differ. The other runs (missing, failed) join the group of a finished
    run of their folder with the same overrides, or keep their overrides' name.

    Raises:
        ValueError: one variant holds the same seed (and fold) twice, e.g. one sweep read twice
            or rerun into two folders: name them apart with labels.
    """
    known = [run for run in runs if run.status in ("ok", "debug")]
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in known:
        key = (run.model, run.label, repr(sorted(run.identity.items())))
        groups.setdefault(key, []).append(run)
    by_model: dict[tuple[str, str], list[list[Run]]] = {}
    for (model, label, _), members in groups.items():
        by_model.setdefault((model, label), []).append(members)
    for (model, label), model_groups in by_model.items():
        names = _group_names(model_groups, sweep_keys)
        for members, name in zip(model_groups, names, strict=True):
            variant = " ".join(filter(None, [model, f"[{label}]" if label else "", name]))
            for run in members:
                run.variant = variant
    for run in runs:
        if run.status in ("ok", "debug"):
            continue
        twin = next((k for k in known if _same_job_kind(k, run, sweep_keys)), None)
        if twin is not None:
            run.variant = twin.variant
        elif run.label:
            run.variant = f"{run.model} [{run.label}]"
    _check_repeats(known)


def _group_names(groups: list[list[Run]], sweep_keys: list[str]) -> list[str]:
    """What tells each group of one model apart ("" when there is one group)."""
    if len(groups) == 1:
        return [""]
    swept = [k for k in sweep_keys if k not in (MODEL_KEY, *REPEAT_KEYS)]
    by_overrides = [
        " ".join(f"{k}={g[0].overrides[k]}" for k in swept if k in g[0].overrides) for g in groups
    ]
    if all(by_overrides) and len(set(by_overrides)) == len(groups):
        return by_overrides
    identities = [g[0].identity for g in groups]
    keys = differing_keys(identities)
    names = []
    for identity in identities:
        parts = [f"{k}={_short(identity.get(k, '-'))}" for k in keys[:LABEL_KEYS]]
        names.append(" ".join(parts) + (" ..." if len(keys) > LABEL_KEYS else ""))
    if len(set(names)) < len(names):  # differing beyond the keys shown
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    return names


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text.rsplit(".", 1)[-1] if text.startswith(("brainseg.", "torch.")) else text


def _same_job_kind(known: Run, run: Run, sweep_keys: list[str]) -> bool:
    if known.source != run.source or known.model != run.model:
        return False
    keys = [k for k in sweep_keys if k not in (MODEL_KEY, *REPEAT_KEYS)]
    return all(known.overrides.get(k) == run.overrides.get(k) for k in keys)


def _check_repeats(runs: list[Run]) -> None:
    seen: dict[tuple[str, int | None, int | None], Run] = {}
    for run in runs:
        key = (run.variant, run.seed, run.fold)
        if key in seen:
            raise ValueError(
                f"{run.name} appears twice, in {seen[key].where} and {run.where}, with the same "
                "settings: the same sweep read twice, or rerun into two folders. Compare them "
                "apart with --label <folder>=<name>, or keep one."
            )
        seen[key] = run


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """A saved (unresolved) config, each value resolved where the config alone can resolve it
    (`${seed}`), and kept as written where it cannot (`${now:...}`, `${hydra:...}`)."""
    root = OmegaConf.create(config)
    resolved: dict[str, Any] = {}
    for key, value in _leaves(config):
        if is_execution_key(key):
            continue
        try:
            node = OmegaConf.select(root, key, throw_on_resolution_failure=True)
            if OmegaConf.is_config(node):
                node = OmegaConf.to_container(node, resolve=True)
            value = node
        except Exception:  # a resolver of another process (hydra, now, brainseg.precision)
            pass
        resolved[key] = value
    return resolved


def _leaves(config: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    leaves = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves += _leaves(value, f"{name}.")
        else:
            leaves.append((name, value))
    return leaves


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
    absent = [column for column in registry.required_columns() if column not in frame]
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
    return _with_overlap(frame)


def _with_overlap(frame: pd.DataFrame) -> pd.DataFrame:
    """Older per_image.csv files lack `tp` (the overlap's pixels), which the pooled metrics of the
    report's statistics and strata need: Dice = 2 tp / (pred_area + true_area) gives it back,
    rounded to the whole pixel it is."""
    if "tp" not in frame and {"dice", "pred_area", "true_area"} <= set(frame.columns):
        areas = frame["pred_area"] + frame["true_area"]
        frame["tp"] = (frame["dice"] * areas / 2).round().astype(int)
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
