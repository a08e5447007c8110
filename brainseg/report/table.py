"""The study's Table 1 from a sweep: mean ± std over runs per model, the study's numbers beside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainseg.report.collect import Sweep
from brainseg.report.stats import METRIC_LABELS

TABLE_METRICS = ("dice", "dice_pooled", "precision", "recall", "lesion_recall", "inference_ms")
STUDY_TABLE = Path(__file__).resolve().parents[1] / "reference" / "study_table.csv"


def load_study_table(path: Path = STUDY_TABLE) -> pd.DataFrame:
    """The study's Table 1 (5 runs per model, mean ± std): metric, model, label, mean, std, n."""
    return pd.read_csv(path)


def build_table(sweep: Sweep, reference: bool = True) -> pd.DataFrame:
    """One row per metric; columns `<variant>_mean/_std/_n` (std over runs, ddof=1) and, with
    `reference`, `study_<model>_mean/_std/_n` for the models the study has numbers for."""
    table = pd.DataFrame(index=pd.Index(TABLE_METRICS, name="metric"))
    table.insert(0, "label", [METRIC_LABELS[m] for m in TABLE_METRICS])
    for variant in sweep.variants:
        runs = sweep.runs_of(variant)
        for metric in TABLE_METRICS:
            values = np.array([r.test.get(metric, np.nan) for r in runs], dtype=float)
            values = values[np.isfinite(values)]
            table.loc[metric, f"{variant}_mean"] = values.mean() if values.size else np.nan
            table.loc[metric, f"{variant}_std"] = values.std(ddof=1) if values.size > 1 else np.nan
            table.loc[metric, f"{variant}_n"] = values.size
    if reference:
        study = load_study_table()
        models = list(dict.fromkeys(study["model"]))
        shown = [m for m in models if m in {r.model for r in sweep.runs}] or models
        for model in shown:
            rows = study[study["model"] == model].set_index("metric")
            for key in ("mean", "std", "n"):
                table[f"study_{model}_{key}"] = rows[key].reindex(table.index)
    return table


def table_markdown(sweep: Sweep, table: pd.DataFrame) -> str:
    """table.md: the table with ± formatting, problems of the sweep first."""
    lines = ["# Results", ""]
    lines += problems_markdown(sweep)
    columns, headers = [], []
    for variant in sweep.variants:
        n_runs = len(sweep.runs_of(variant))
        columns.append(variant)
        headers.append(f"{variant} (n={n_runs})")
    study_models = [
        c.removeprefix("study_").removesuffix("_mean")
        for c in table.columns
        if c.startswith("study_") and c.endswith("_mean")
    ]
    study = load_study_table().drop_duplicates("model").set_index("model")["label"]
    headers += [f"{study.get(m, m)} (study, n={_study_n(table, m)})" for m in study_models]
    lines += ["| metric | " + " | ".join(headers) + " |", "| --- |" + " --- |" * len(headers)]
    for metric, row in table.iterrows():
        digits = 2 if metric == "inference_ms" else 4
        cells = [_cell(row, v, digits) for v in columns]
        cells += [_cell(row, f"study_{m}", digits) for m in study_models]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", _footer(sweep, bool(study_models)), ""]
    return "\n".join(lines)


def problems_markdown(sweep: Sweep) -> list[str]:
    """A warning block naming every missing, failed or unfinished job (empty when none)."""
    if not sweep.problems:
        return []
    lines = [
        f"**Incomplete sweep: {len(sweep.problems)} of {len(sweep.runs)} jobs did not "
        "finish; the numbers below average only the finished runs (see n).**",
        "",
    ]
    for run in sweep.problems:
        where = f" ({run.job_dir.name}/)" if run.job_dir else ""
        lines.append(f"- {run.status.upper()}: {run.name}{where}: {run.error}")
    return lines + [""]


def _cell(row: pd.Series, prefix: str, digits: int) -> str:
    mean, std = row.get(f"{prefix}_mean", np.nan), row.get(f"{prefix}_std", np.nan)
    if not np.isfinite(mean):
        return "—"
    if not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _study_n(table: pd.DataFrame, model: str) -> int:
    values = table[f"study_{model}_n"].dropna()
    return int(values.iloc[0]) if len(values) else 0


def _footer(sweep: Sweep, reference: bool) -> str:
    devices = sorted({str(r.metrics.get("device")) for r in sweep.ok if r.metrics.get("device")})
    epochs = sorted(
        {int(r.metrics["epochs"]) for r in sweep.ok if r.metrics.get("epochs") is not None}
    )
    parts = ["Mean ± std over runs (seeds and folds; std with ddof=1); n = finished runs."]
    if devices:
        parts.append(f"Inference timed on: {', '.join(devices)} (batch 1).")
    if epochs:
        parts.append(f"Epochs: {', '.join(map(str, epochs))}.")
    if reference:
        parts.append("Study: its Table 1 (5 runs per model; its GPU is not stated).")
    return " ".join(parts)
