"""The comparison report of a sweep, or of several: table, paired statistics, figures (and W&B).

python -m brainseg.report multirun/<date>/<time>
python -m brainseg.report multirun/a multirun/b --label multirun/a=6ep
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import pandas as pd

from brainseg.atomic import write_text
from brainseg.report import figures
from brainseg.report.collect import Run, Sweep, load_sweep, load_sweeps
from brainseg.report.qualitative import qualitative_grids
from brainseg.report.stats import (
    average_runs,
    paired_stats,
    rank_variants,
    ranking_markdown,
    stats_markdown,
)
from brainseg.report.strata import size_edges, strata_markdown, strata_table
from brainseg.report.table import build_table, header_markdown, load_study_table, table_markdown

__all__ = ["MixedTestSets", "Run", "Sweep", "build_report", "load_sweep", "load_sweeps"]


class MixedTestSets(ValueError):
    """Two variants were tested on different test sets: their slices cannot be paired."""


log = logging.getLogger(__name__)


def build_report(
    sweep_dir: str | os.PathLike | Sweep,
    study: bool = True,
    wandb: bool | None = None,
    qualitative: bool = True,
    n_resamples: int = 2000,
    seed: int = 0,
    include_debug: bool = False,
    reference: str | None = None,
) -> dict[str, Path]:
    """Writes `<sweep_dir>/report/` (a comparison's own folder: `Sweep.report_dir`):
    table.{md,csv}, stats.{md,csv}, strata.{md,csv} (every metric per tumor type and size
    tertile) and the figures.

    Only complete runs count (metrics.json and per_image.csv readable, status "ok"); the
    others are listed, with the reason, at the top of table.md and stats.md. Variants are
    paired only when their runs were tested on the same slices (the test-set hash of their
    metrics.json); otherwise the report stops with `MixedTestSets`, unless the sweep was read
    with `allow_mixed`, which leaves such pairs out of the statistics and says so.

    Args:
        sweep_dir: the sweep's folder, or a sweep already read with `load_sweep`.
        study: show the study's Table 1 numbers alongside.
        wandb: log to the sweep's W&B group; None = when the sweep's jobs used W&B.
        qualitative: predict the best, median and worst slices with each model's first run.
        n_resamples, seed: of the bootstrap confidence intervals.
        include_debug: average debug runs (no full training) too; a sweep read with
            `load_sweep(..., include_debug=True)` includes them already.
        reference: compare every variant with this one only; default every pair. Either way
            the Wilcoxon p-values are Holm-corrected for the pairs compared.

    Returns:
        {name: path} of every file written.
    """
    if isinstance(sweep_dir, Sweep):
        sweep = replace(sweep_dir, include_debug=sweep_dir.include_debug or include_debug)
    else:
        sweep = load_sweep(sweep_dir, include_debug=include_debug)
    out = sweep.report_dir
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    table = build_table(sweep, study)
    written["table.csv"] = _write(out / "table.csv", table.to_csv())
    written["table.md"] = _write(out / "table.md", table_markdown(sweep, table))

    per_image = per_image_means(sweep)
    pairs, refused = comparable_pairs(sweep, candidate_pairs(list(per_image), reference))
    edges = size_edges(per_image)
    stats = paired_stats(per_image, n_resamples=n_resamples, seed=seed, pairs=pairs, edges=edges)
    n_runs = {v: len(_tested_runs(sweep, v)) for v in per_image}
    written["stats.csv"] = _write(out / "stats.csv", stats.to_csv(index=False))
    markdown = stats_markdown(
        stats, n_runs, n_resamples, header=header_markdown(sweep), refused=refused
    )
    if len(per_image) > 2 and not refused:
        ranking = rank_variants(per_image, n_resamples=n_resamples, seed=seed)
        written["ranking.csv"] = _write(out / "ranking.csv", ranking.to_csv(index=False))
        markdown += "\n" + "\n".join(ranking_markdown(ranking))
    written["stats.md"] = _write(out / "stats.md", markdown)
    if per_image:
        frames = [f.assign(model=v) for v, f in per_image.items()]
        written["per_image_mean.csv"] = _write(
            out / "per_image_mean.csv", pd.concat(frames).to_csv(index=False)
        )

    strata = strata_table(per_image, edges)
    written["strata.csv"] = _write(out / "strata.csv", strata.to_csv(index=False))
    written["strata.md"] = _write(out / "strata.md", strata_markdown(strata))

    study_table = load_study_table() if study else None
    pictures = [
        figures.learning_curves(sweep, out / "learning_curves.png"),
        figures.dice_distribution(per_image, out / "dice_distribution.png"),
        figures.dice_vs_ms(sweep, out / "dice_vs_ms.png", study_table),
        figures.reliability(sweep, out / "reliability.png"),
    ]
    if qualitative and per_image:
        pictures += qualitative_grids(sweep, per_image, out)
    written.update({p.name: p for p in pictures if p is not None})

    if wandb if wandb is not None else sweep.wandb_config is not None:
        from brainseg.tracking.dashboard import log_report

        run_dir = log_report(sweep, table, stats, [p for p in pictures if p], out, strata)
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


def test_sets(runs: list[Run]) -> dict[int | None, str | None]:
    """fold -> the test-set hash its runs recorded (None: not recorded, older runs)."""
    return {run.fold: run.protocol.get("test_set") for run in runs}


def candidate_pairs(variants: list[str], reference: str | None = None) -> list[tuple[str, str]]:
    """Every pair of `variants` (A before B in their order), or `reference` against each other.

    Raises:
        ValueError: `reference` is not one of the variants.
    """
    if reference is None:
        return list(combinations(variants, 2))
    if reference not in variants:
        raise ValueError(
            f"--reference {reference!r} is not a variant with results; the variants are: "
            + ", ".join(variants)
        )
    return [(reference, v) for v in variants if v != reference]


def comparable_pairs(
    sweep: Sweep, pairs: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """Those of `pairs` tested on the same slices, and why each other pair is not.

    Raises:
        MixedTestSets: a pair was tested on different slices and the sweep was not read with
            `allow_mixed`; the message names the runs and the protocol keys that differ.
    """
    comparable, refused = [], {}
    for a, b in pairs:
        runs_a, runs_b = _tested_runs(sweep, a), _tested_runs(sweep, b)
        sets_a, sets_b = test_sets(runs_a), test_sets(runs_b)
        recorded = None not in (*sets_a.values(), *sets_b.values())
        if not recorded or sets_a == sets_b:
            comparable.append((a, b))
            continue
        why = _protocol_difference(runs_a[0], runs_b[0])
        if not sweep.allow_mixed:
            raise MixedTestSets(
                f"{a} ({runs_a[0].where}) and {b} ({runs_b[0].where}) were tested on different "
                f"test sets ({why}): their slices cannot be paired. Compare runs of one "
                "protocol, or pass --allow-mixed to report them side by side, unpaired."
            )
        refused[(a, b)] = why
    return comparable, refused


def _protocol_difference(a: Run, b: Run) -> str:
    keys = sorted(set(a.protocol) | set(b.protocol))
    differ = [
        f"{k} {a.protocol.get(k)} vs {b.protocol.get(k)}"
        for k in keys
        if k != "code" and a.protocol.get(k) != b.protocol.get(k)
    ]
    return ", ".join(differ) or "test-set hashes differ"


def _tested_runs(sweep: Sweep, variant: str) -> list[Run]:
    # Used runs always have a per_image.csv (collect marks the others incomplete); the
    # filter keeps a Sweep built by hand honest too, and n is counted from this same list.
    return [run for run in sweep.runs_of(variant) if run.per_image is not None]


def _write(path: Path, text: str) -> Path:
    # Atomic: a reader (the notebook, W&B) never sees half a file.
    return write_text(path, text)
