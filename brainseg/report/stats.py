"""Paired comparison of two models on the same test slices: bootstrap CIs and Wilcoxon tests."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from brainseg.metrics import registry
from brainseg.metrics.registry import MetricSpec
from brainseg.report.strata import row_metrics, size_edges, subsets


def bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    clusters: np.ndarray | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """sum(numerator) / sum(denominator) with a percentile bootstrap CI.

    Whole clusters (patients) are resampled with replacement, so slices of one patient, which
    are not independent, stay together; `clusters=None` resamples single items. A mean is the
    ratio with `denominator` all ones; lesion recall is detected / lesions.

    Returns:
        (estimate, low, high).
    """
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    if numerator.size == 0:
        return float("nan"), float("nan"), float("nan")
    ids = np.arange(numerator.size) if clusters is None else np.asarray(clusters)
    _, inverse = np.unique(ids, return_inverse=True)
    num = np.bincount(inverse, weights=numerator)
    den = np.bincount(inverse, weights=denominator)
    k = num.size
    counts = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n_resamples)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = num.sum() / den.sum() if den.sum() else float("nan")
        resampled = (counts @ num) / (counts @ den)  # (n_resamples,)
    alpha = (1.0 - level) / 2.0
    if not np.isfinite(resampled).any():
        return float(estimate), float("nan"), float("nan")
    low, high = np.nanpercentile(resampled, [100 * alpha, 100 * (1 - alpha)])
    return float(estimate), float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is zero."""
    differences = np.asarray(differences, dtype=float)
    if differences.size == 0:
        return float("nan")
    if not np.any(differences):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small samples: scipy warns about the normal approximation
        return float(wilcoxon(differences).pvalue)


def average_runs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-image metrics averaged over runs (seeds, folds), one row per slice id: every metric
    column the registry declares that the runs recorded."""
    data = pd.concat(frames, ignore_index=True)
    numeric = [c for c in registry.per_image_columns() if c in data]
    means = data.groupby("id", sort=False)[numeric].mean()
    first = data.groupby("id", sort=False)[["pid", "label"]].first()
    return first.join(means).reset_index()


def paired_stats(
    per_image: dict[str, pd.DataFrame],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    pairs: Sequence[tuple[str, str]] | None = None,
    edges: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Differences (B - A) between pairs of variants on the slices both were tested on, for
    every metric computable from per-image rows (`registry.row_metrics`).

    Args:
        per_image: variant -> per-image metrics averaged over its runs (`average_runs`).
        pairs: the (A, B) pairs to compare; default every pair, in `per_image`'s order.
        edges: the tumour-size tertiles' area cut points (`strata.size_edges`); default those
            of `per_image`.

    Returns:
        One row per pair, subset (all, each tumor type, each size tertile) and metric.
    """
    edges = size_edges(per_image) if edges is None else edges
    rows = []
    for a, b in combinations(per_image, 2) if pairs is None else pairs:
        paired = per_image[a].merge(per_image[b], on="id", suffixes=("_a", "_b"))
        specs = row_metrics(per_image[a])
        for stratum, subset, frame in subsets(paired, edges, "label_a", "true_area_a"):
            for spec in specs:
                row = _compare(frame, spec, n_resamples, seed, level)
                if row is not None:
                    rows.append(
                        {"model_a": a, "model_b": b, "stratum": stratum, "subset": subset, **row}
                    )
    stats = pd.DataFrame(rows, columns=STATS_COLUMNS)
    # Holm over the pairs compared, within each subset: the family of one question ("does
    # any variant differ on this subset?") grows with every variant added.
    for _, family in stats.groupby(["subset", "metric"], sort=False):
        stats.loc[family.index, "wilcoxon_p_holm"] = holm(family["wilcoxon_p"].to_numpy())
    return stats


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN, and is not counted in the family)."""
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p_values, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    m = finite.size
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p_values[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def rank_variants(
    per_image: dict[str, pd.DataFrame],
    metric: str = "dice",
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Ranks variants by their mean `metric` on the slices all of them were tested on, with the
    uncertainty of the rank: patients are resampled with replacement, the variants ranked on
    each resample (1 = best), and the mean rank and its percentile interval reported.

    Args:
        per_image: variant -> per-image metrics averaged over its runs; the variants must share
            their test slices (`brainseg.report.comparable_pairs`).

    Returns:
        One row per variant, best first: variant, n_images, mean, rank (on the data), mean_rank,
        rank_low, rank_high, p_best (share of resamples ranking it first).
    """
    columns = ["variant", "n_images", "mean", "rank", "mean_rank", "rank_low", "rank_high"]
    if len(per_image) < 2:
        return pd.DataFrame(columns=[*columns, "p_best"])
    shared = None
    for variant, frame in per_image.items():
        values = frame.set_index("id")[metric].rename(variant)
        shared = values.to_frame() if shared is None else shared.join(values, how="inner")
    first = next(iter(per_image.values())).set_index("id")["pid"].astype(str)
    shared = shared.dropna()
    pids = first.reindex(shared.index).fillna("")
    clusters = pids.to_numpy() if len(pids) and (pids != "").all() else shared.index.to_numpy()
    _, inverse = np.unique(clusters, return_inverse=True)
    sums = np.stack([np.bincount(inverse, weights=shared[v]) for v in per_image], axis=1)
    counts = np.bincount(inverse).astype(float)
    k = counts.size
    draws = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n_resamples)
    means = (draws @ sums) / (draws @ counts)[:, None]  # (n_resamples, variants)
    ranks = _ranks(means)
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(ranks, [100 * alpha, 100 * (1 - alpha)], axis=0)
    observed = shared.mean().to_numpy()
    table = pd.DataFrame(
        {
            "variant": list(per_image),
            "n_images": len(shared),
            "mean": observed,
            "rank": _ranks(observed[None, :])[0],
            "mean_rank": ranks.mean(axis=0),
            "rank_low": low,
            "rank_high": high,
            "p_best": (ranks == 1).mean(axis=0),
        }
    )
    return table.sort_values(["mean_rank", "rank"], kind="stable").reset_index(drop=True)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each column within each row, 1 = highest; ties share the better rank."""
    return (values[:, None, :] > values[:, :, None]).sum(axis=2) + 1.0


def ranking_markdown(ranking: pd.DataFrame, metric: str = "dice", level: float = 0.95) -> list[str]:
    """The ranking as a markdown section (empty with fewer than two variants)."""
    if ranking.empty:
        return []
    pct = f"{100 * level:g} %"
    lines = [
        f"## Ranking by {registry.label(metric)}",
        "",
        f"On the {int(ranking['n_images'].iloc[0])} slices every variant was tested on; rank 1 = "
        f"best. Mean rank and its {pct} interval over patient-bootstrap resamples; P(best) = "
        "share of resamples ranking the variant first.",
        "",
        "| variant | mean | rank | mean rank [interval] | P(best) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in ranking.itertuples():
        lines.append(
            f"| {row.variant} | {row.mean:.4f} | {row.rank:g} | {row.mean_rank:.2f} "
            f"[{row.rank_low:g}, {row.rank_high:g}] | {row.p_best:.2f} |"
        )
    return [*lines, ""]


# Below this many resampled units a bootstrap interval is too coarse to trust.
FEW = 10

STATS_COLUMNS = [
    "model_a",
    "model_b",
    "stratum",
    "subset",
    "metric",
    "n_images",
    "n_clusters",
    "unit",
    "mean_a",
    "mean_b",
    "diff",
    "ci_low",
    "ci_high",
    "wilcoxon_p",
    "wilcoxon_p_holm",
]


def _compare(
    frame: pd.DataFrame, spec: MetricSpec, n_resamples: int, seed: int, level: float
) -> dict | None:
    """The paired difference of `spec` on the rows of `frame` (columns `<c>_a`, `<c>_b`), with
    its patient-bootstrap CI, and a Wilcoxon test of per-image differences for a per-image mean;
    None when the rows lack its columns or it is undefined on them."""
    columns = spec.value.columns
    if len(frame) == 0 or any(f"{c}_a" not in frame or f"{c}_b" not in frame for c in columns):
        return None
    rows_a = {c: frame[f"{c}_a"].to_numpy(dtype=float) for c in columns}
    rows_b = {c: frame[f"{c}_b"].to_numpy(dtype=float) for c in columns}
    ones = np.ones((1, len(frame)))
    mean_a, mean_b = spec.value(rows_a, ones)[0], spec.value(rows_b, ones)[0]
    if not (np.isfinite(mean_a) and np.isfinite(mean_b)):
        return None
    pids = frame["pid_a"].astype(str)
    by_patient = bool((pids != "").all())
    clusters = pids.to_numpy() if by_patient else np.arange(len(frame))
    _, inverse = np.unique(clusters, return_inverse=True)
    k = inverse.max() + 1
    counts = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n_resamples)
    weights = counts[:, inverse].astype(float)  # (n_resamples, rows): each row's multiplicity
    diffs = spec.value(rows_b, weights) - spec.value(rows_a, weights)
    alpha = (1.0 - level) / 2.0
    low, high = (
        np.nanpercentile(diffs, [100 * alpha, 100 * (1 - alpha)])
        if np.isfinite(diffs).any()
        else (np.nan, np.nan)
    )
    wilcoxon = float("nan")
    if spec.wilcoxon:
        wilcoxon = wilcoxon_p(rows_b[spec.value.column] - rows_a[spec.value.column])
    return {
        "metric": spec.name,
        "n_images": len(frame),
        "n_clusters": int(k),
        "unit": "patient" if by_patient else "image",
        "mean_a": float(mean_a),
        "mean_b": float(mean_b),
        "diff": float(mean_b - mean_a),
        "ci_low": float(low),
        "ci_high": float(high),
        "wilcoxon_p": wilcoxon,
    }


def stats_markdown(
    stats: pd.DataFrame,
    n_runs: dict[str, int],
    n_resamples: int,
    level: float = 0.95,
    header: Sequence[str] = (),
    refused: dict[tuple[str, str], str] | None = None,
) -> str:
    """stats.md: one table per pair of variants.

    Args:
        n_runs: variant -> the number of runs whose per-image results were averaged.
        header: markdown lines after the title (the sweep's problems and split).
        refused: (A, B) -> why the pair was not compared.
    """
    pct = f"{100 * level:g} %"
    lines = ["# Paired comparison on the shared test slices", "", *header]
    if refused:
        lines += [
            "**Not paired: these variants were tested on different test sets (--allow-mixed).**",
            "",
            *(f"- {a} and {b}: {why}" for (a, b), why in refused.items()),
            "",
        ]
    if stats.empty:
        return "\n".join(
            lines + ["Fewer than two models with per-image results: nothing to compare.", ""]
        )
    runs = ", ".join(f"{v}: {n} run{'s' if n != 1 else ''}" for v, n in n_runs.items())
    lines += [
        f"Per-image metrics averaged over each model's runs ({runs}), then paired by slice. "
        f"Difference = B − A with a {pct} percentile bootstrap CI ({n_resamples} resamples of "
        "whole patients when patient ids are known, else of slices). Each metric is computed "
        "as in the table: pooled ones (Dice pooled, precision, recall, lesion recall) over the "
        "pixels or lesions of the resampled slices. Wilcoxon signed-rank test on the per-slice "
        "values of the per-image metrics (it treats slices as independent; slices of one patient "
        "are not, so read its p-value as optimistic); Holm p corrects it for the number of pairs "
        "compared on the same subset. Subsets: all slices, each tumor type, each tumor-size "
        "tertile (strata.md).",
        "",
    ]
    for (a, b), pair in stats.groupby(["model_a", "model_b"], sort=False):
        lines += [
            f"## B = {b} vs A = {a}",
            "",
            f"| subset | metric | slices (units) | {a} | {b} | {b} − {a} [{pct} CI] "
            "| Wilcoxon p | Holm p |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in pair.itertuples():
            p, holm_p = (_p(row.wilcoxon_p), _p(row.wilcoxon_p_holm))
            d = registry.get(row.metric).digits if row.metric in registry.METRICS else 4
            lines.append(
                f"| {row.subset} | {registry.label(row.metric)} | "
                f"{row.n_images} ({row.n_clusters} {row.unit}s) | {row.mean_a:.{d}f} | "
                f"{row.mean_b:.{d}f} | {row.diff:+.{d}f} "
                f"[{row.ci_low:+.{d}f}, {row.ci_high:+.{d}f}]"
                f"{_marker(row.ci_low, row.ci_high, row.n_clusters)} | {p} | {holm_p} |"
            )
        lines.append("")
    lines += [
        f"\\* the CI excludes 0. † fewer than {FEW} resampled units: the CI is unreliable.",
        "",
    ]
    return "\n".join(lines)


def _p(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.3g}"


def _marker(low: float, high: float, units: int) -> str:
    excludes_zero = " \\*" if (low > 0 or high < 0) else ""
    return excludes_zero + (" †" if units < FEW else "")
