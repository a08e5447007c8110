"""The comparison report of a sweep: table, paired statistics, figures (and W&B).

python -m brainseg.report multirun/<date>/<time>
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from brainseg.atomic import write_text
from brainseg.report import figures
from brainseg.report.collect import Run, Sweep, load_sweep
from brainseg.report.qualitative import qualitative_grids
from brainseg.report.stats import average_runs, paired_stats, stats_markdown
from brainseg.report.table import build_table, header_markdown, load_study_table, table_markdown

__all__ = ["Run", "Sweep", "build_report", "load_sweep"]

log = logging.getLogger(__name__)


def build_report(
    sweep_dir: str | os.PathLike | Sweep,
    reference: bool = True,
    wandb: bool | None = None,
    qualitative: bool = True,
    n_resamples: int = 2000,
    seed: int = 0,
    include_debug: bool = False,
) -> dict[str, Path]:
    """Writes `<sweep_dir>/report/`: table.{md,csv}, stats.{md,csv} and the figures.

    Only complete runs count (metrics.json and per_image.csv readable, status "ok"); the
    others are listed, with the reason, at the top of table.md and stats.md.

    Args:
        sweep_dir: the sweep's folder, or a sweep already read with `load_sweep`.
        reference: show the study's Table 1 numbers alongside.
        wandb: log to the sweep's W&B group; None = when the sweep's jobs used W&B.
        qualitative: predict the best, median and worst slices with each model's first run.
        n_resamples, seed: of the bootstrap confidence intervals.
        include_debug: average debug runs (no full training) too; a sweep read with
            `load_sweep(..., include_debug=True)` includes them already.

    Returns:
        {name: path} of every file written.
    """
    if isinstance(sweep_dir, Sweep):
        sweep = replace(sweep_dir, include_debug=sweep_dir.include_debug or include_debug)
    else:
        sweep = load_sweep(sweep_dir, include_debug=include_debug)
    out = sweep.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    table = build_table(sweep, reference)
    written["table.csv"] = _write(out / "table.csv", table.to_csv())
    written["table.md"] = _write(out / "table.md", table_markdown(sweep, table))

    per_image = per_image_means(sweep)
    stats = paired_stats(per_image, n_resamples=n_resamples, seed=seed)
    n_runs = {v: len(_tested_runs(sweep, v)) for v in per_image}
    written["stats.csv"] = _write(out / "stats.csv", stats.to_csv(index=False))
    markdown = stats_markdown(stats, n_runs, n_resamples, header=header_markdown(sweep))
    written["stats.md"] = _write(out / "stats.md", markdown)
    if per_image:
        frames = [f.assign(model=v) for v, f in per_image.items()]
        written["per_image_mean.csv"] = _write(
            out / "per_image_mean.csv", pd.concat(frames).to_csv(index=False)
        )

    study = load_study_table() if reference else None
    pictures = [
        figures.learning_curves(sweep, out / "learning_curves.png"),
        figures.dice_distribution(per_image, out / "dice_distribution.png"),
        figures.dice_vs_ms(sweep, out / "dice_vs_ms.png", study),
    ]
    if qualitative and per_image:
        pictures += qualitative_grids(sweep, per_image, out)
    written.update({p.name: p for p in pictures if p is not None})

    if wandb if wandb is not None else sweep.wandb_config is not None:
        from brainseg.tracking.dashboard import log_report

        run_dir = log_report(sweep, table, stats, [p for p in pictures if p], out)
        if run_dir:
            written["wandb"] = Path(run_dir)
    return written


def per_image_means(sweep: Sweep) -> dict[str, pd.DataFrame]:
    """variant -> per-image metrics averaged over its used runs (variants without any are left
    out)."""
    means = {}
    for variant in sweep.variants:
        if runs := _tested_runs(sweep, variant):
            means[variant] = average_runs([run.per_image for run in runs])
    return means


def _tested_runs(sweep: Sweep, variant: str) -> list[Run]:
    # Used runs always have a per_image.csv (collect marks the others incomplete); the
    # filter keeps a Sweep built by hand honest too, and n is counted from this same list.
    return [run for run in sweep.runs_of(variant) if run.per_image is not None]


def _write(path: Path, text: str) -> Path:
    # Atomic: a reader (the notebook, W&B) never sees half a file.
    return write_text(path, text)
