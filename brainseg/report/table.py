"""The study's Table 1 from a sweep: mean ± std over runs per model, the study's numbers beside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainseg.metrics import registry
from brainseg.report.collect import Run, Sweep

STUDY_TABLE = Path(__file__).resolve().parents[1] / "reference" / "study_table.csv"


def load_study_table(path: Path = STUDY_TABLE) -> pd.DataFrame:
    """The study's Table 1 (5 runs per model, mean ± std): metric, model, label, mean, std, n."""
    return pd.read_csv(path)


def table_metrics(sweep: Sweep) -> tuple[str, ...]:
    """The table's rows: every registered metric that a used run recorded, in the registry's
    order (the empty-slice ones only appear for sets with tumor-free slices; metrics added since
    older runs were made appear when a run has them)."""
    recorded = {key for run in sweep.used for key in run.test}
    return tuple(spec.name for spec in registry.specs() if spec.name in recorded)


def build_table(sweep: Sweep, study: bool = True) -> pd.DataFrame:
    """One row per metric; columns `<variant>_mean/_std/_n` (std over runs, ddof=1; n = runs
    that recorded the metric) and, with `study`, `study_<model>_mean/_std/_n` for the
    models the study has numbers for."""
    metrics = table_metrics(sweep)
    table = pd.DataFrame(index=pd.Index(metrics, name="metric"))
    table.insert(0, "label", [registry.label(m) for m in metrics])
    for variant in sweep.variants:
        runs = sweep.runs_of(variant)
        for metric in metrics:
            values = np.array([r.test.get(metric, np.nan) for r in runs], dtype=float)
            values = values[np.isfinite(values)]
            table.loc[metric, f"{variant}_mean"] = values.mean() if values.size else np.nan
            table.loc[metric, f"{variant}_std"] = values.std(ddof=1) if values.size > 1 else np.nan
            table.loc[metric, f"{variant}_n"] = values.size
    if study:
        published = load_study_table()
        models = list(dict.fromkeys(published["model"]))
        shown = [m for m in models if m in {r.model for r in sweep.runs}] or models
        for model in shown:
            rows = published[published["model"] == model].set_index("metric")
            for key in ("mean", "std", "n"):
                table[f"study_{model}_{key}"] = rows[key].reindex(table.index)
    return table


def table_markdown(sweep: Sweep, table: pd.DataFrame) -> str:
    """table.md: the table with ± formatting, the sweep's problems and split first."""
    lines = ["# Results", ""]
    lines += header_markdown(sweep)
    columns, headers, n_runs = [], [], {}
    for variant in sweep.variants:
        n_runs[variant] = len(sweep.runs_of(variant))
        columns.append(variant)
        headers.append(f"{variant} (n={n_runs[variant]})")
    study_models = [
        c.removeprefix("study_").removesuffix("_mean")
        for c in table.columns
        if c.startswith("study_") and c.endswith("_mean")
    ]
    study = load_study_table().drop_duplicates("model").set_index("model")["label"]
    headers += [f"{study.get(m, m)} (study, n={_study_n(table, m)})" for m in study_models]
    lines += ["| metric | " + " | ".join(headers) + " |", "| --- |" + " --- |" * len(headers)]
    for metric, row in table.iterrows():
        digits = registry.get(metric).digits
        cells = [_cell(row, v, digits, n_runs[v]) for v in columns]
        cells += [_cell(row, f"study_{m}", digits) for m in study_models]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    empty_slices = any(registry.get(m).tumor_free_only for m in table.index)
    lines += ["", _footer(sweep, bool(study_models), empty_slices), ""]
    lines += surface_markdown(sweep, table)
    lines += cost_markdown(sweep) + protocol_markdown(sweep)
    return "\n".join(lines)


def surface_markdown(sweep: Sweep, table: pd.DataFrame) -> list[str]:
    """A note under the table when it has boundary metrics: their unit, and how many test slices
    were scored by the worst-value rule (an empty prediction on a tumor slice, or a prediction on
    a tumor-free slice), counted from per_image.csv's areas."""
    distances = [m for m in table.index if registry.get(m).unit == "px"]
    if not distances:
        return []
    sizes = sorted({str(r.metrics.get("image_size")) for r in sweep.used})
    worst, total = 0, 0
    for run in sweep.used:
        if run.per_image is None or "hd95" not in run.per_image:
            continue
        pred, true = run.per_image["pred_area"] > 0, run.per_image["true_area"] > 0
        worst += int((pred != true).sum())
        total += len(run.per_image)
    return [
        f"Boundary metrics in pixels at the evaluated size ({', '.join(sizes)} px); no pixel "
        "spacing is recorded by the source, so no mm. Slices where exactly one of prediction "
        "and truth is empty score the worst value (HD95 and ASSD the image diagonal, NSD 0): "
        f"{worst} of {total} test slices over all runs (docs/metrics.md).",
        "",
    ]


# What each variant costs, from its runs' metrics.json: (key, column, scale, digits).
COST = (
    ("params", "params (M)", 1e-6, 2),
    ("flops", "GFLOPs / image", 1e-9, 2),
    ("wall_time_s", "training (min)", 1 / 60, 1),
    ("epochs", "epochs", 1, 0),
)


def cost_table(sweep: Sweep) -> pd.DataFrame:
    """One row per variant with a used run: the mean of its runs' params, FLOPs per image at
    their image size, training wall time and epochs, and batch-1 inference ms (NaN where no run
    recorded it)."""
    rows = []
    for variant in sweep.variants:
        runs = sweep.runs_of(variant)
        if not runs:
            continue
        row = {"variant": variant}
        for key, *_ in COST:
            row[key] = _mean([r.metrics.get(key) for r in runs])
        row["inference_ms"] = _mean([r.test.get("inference_ms") for r in runs])
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", *(k for k, *_ in COST), "inference_ms"])


def cost_markdown(sweep: Sweep) -> list[str]:
    """The cost table as markdown, so that quality is read against what it costs."""
    costs = cost_table(sweep)
    if costs.empty:
        return []
    header = "| variant | " + " | ".join(c for _, c, *_ in COST) + " | inference (ms, batch 1) |"
    lines = ["## Cost", "", "Means over each variant's runs.", "", header]
    lines.append("|" + " --- |" * (header.count("|") - 1))
    for row in costs.itertuples(index=False):
        cells = [_number(getattr(row, key), scale, digits) for key, _, scale, digits in COST] + [
            _number(row.inference_ms, 1, 2)
        ]
        lines.append(f"| {row.variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _mean(values: list) -> float:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(np.mean(numbers)) if numbers else float("nan")


def _number(value: float, scale: float, digits: int) -> str:
    return "—" if not np.isfinite(value) else f"{value * scale:.{digits}f}"


# The protocol fingerprint's entries shown per variant (brainseg.train.protocol).
PROTOCOL_KEYS = ("test_set", "test_slices", "image_size", "preset", "max_epochs", "data", "code")


def protocol_markdown(sweep: Sweep) -> list[str]:
    """What each variant was tested on and how it was trained, from its runs' fingerprints
    (metrics.json `protocol`); values that differ between a variant's runs are all listed.
    Empty when no run recorded one."""
    rows = []
    for variant in sweep.variants:
        protocols = [r.protocol for r in sweep.runs_of(variant) if r.protocol]
        if not protocols:
            continue
        cells = []
        for key in PROTOCOL_KEYS:
            values = list(dict.fromkeys(str(p.get(key)) for p in protocols))
            cells.append(", ".join(v[:12] if key in ("code",) else v for v in values))
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    header = "| variant | test set | test slices | size | preset | epochs | data | code |"
    return [
        "## Protocol",
        "",
        "Each variant's fingerprint (metrics.json `protocol`): runs are paired slice by slice "
        "only when their test-set hashes agree.",
        "",
        header,
        "|" + " --- |" * (header.count("|") - 1),
        *rows,
        "",
    ]


def header_markdown(sweep: Sweep) -> list[str]:
    """The report's header: jobs left out (missing, failed, incomplete) and debug runs, each
    with the reason, then the split the runs used (a warning when they differ)."""
    return problems_markdown(sweep) + debug_markdown(sweep) + split_markdown(sweep)


def problems_markdown(sweep: Sweep) -> list[str]:
    """A warning block naming every missing, failed or incomplete job (empty when none)."""
    if not sweep.problems:
        return []
    lines = [
        f"**Incomplete sweep: {len(sweep.problems)} of {len(sweep.runs)} jobs did not "
        "finish; the numbers below leave them out and average only the complete runs "
        "(see n).**",
        "",
    ]
    return lines + [_run_line(run) for run in sweep.problems] + [""]


def debug_markdown(sweep: Sweep) -> list[str]:
    """The debug runs (no full training), and whether the numbers include them."""
    if not sweep.debug:
        return []
    n = len(sweep.debug)
    runs = f"{n} debug run{'s' if n != 1 else ''} (no full training)"
    if sweep.include_debug:
        lead = f"**{runs} included (--include-debug): these numbers are not study results.**"
    else:
        lead = f"**{runs} left out of the numbers below; --include-debug includes them.**"
    return [lead, "", *(_run_line(run) for run in sweep.debug), ""]


def split_markdown(sweep: Sweep) -> list[str]:
    """`Split: by patient.`, or a warning naming the runs of each split when they differ."""
    splits = sweep.splits
    if len(splits) == 1:
        return [f"Split: {_split_name(next(iter(splits)))}.", ""]
    if not splits:
        return []
    parts = "; ".join(
        f"{_split_name(split)}: {', '.join(run.name for run in runs)}"
        for split, runs in splits.items()
    )
    return [
        f"**Warning: the runs used different splits ({parts}); their test sets differ, so "
        "their numbers do not compare like for like.**",
        "",
    ]


def _split_name(split: str) -> str:
    return f"by {split}" if split in ("patient", "image") else split


def _run_line(run: Run) -> str:
    where = f" ({run.job_dir.name}/)" if run.job_dir else ""
    return f"- {run.status.upper()}: {run.name}{where}: {run.error}"


def _cell(row: pd.Series, prefix: str, digits: int, n_runs: int | None = None) -> str:
    """mean ± std, with the metric's own n when fewer runs than the column's recorded it."""
    mean, std = row.get(f"{prefix}_mean", np.nan), row.get(f"{prefix}_std", np.nan)
    if not np.isfinite(mean):
        return "—"
    n = row.get(f"{prefix}_n", np.nan)
    own_n = f" (n={int(n)})" if n_runs is not None and np.isfinite(n) and n != n_runs else ""
    if not np.isfinite(std):
        return f"{mean:.{digits}f}{own_n}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{own_n}"


def _study_n(table: pd.DataFrame, model: str) -> int:
    values = table[f"study_{model}_n"].dropna()
    return int(values.iloc[0]) if len(values) else 0


def _footer(sweep: Sweep, reference: bool, empty_slices: bool = False) -> str:
    used = sweep.used
    devices = sorted({str(r.metrics.get("device")) for r in used if r.metrics.get("device")})
    epochs = sorted({int(r.metrics["epochs"]) for r in used if r.metrics.get("epochs") is not None})
    parts = ["Mean ± std over runs (seeds and folds; std with ddof=1); n = runs averaged."]
    if devices:
        parts.append(f"Inference timed on: {', '.join(devices)} (batch 1).")
    if epochs:
        parts.append(f"Epochs: {', '.join(map(str, epochs))}.")
    if empty_slices:
        parts.append(
            "Some test sets have tumor-free slices: Dice counts an empty prediction there as 1, "
            "Dice (tumor slices) leaves them out (see brainseg.metrics)."
        )
    if reference:
        parts.append("Study: its Table 1 (5 runs per model; its GPU is not stated).")
    return " ".join(parts)
