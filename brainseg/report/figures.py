"""Report figures (PNG): learning curves, per-image Dice distributions, Dice against speed.

Every figure draws a model in the colour `model_colors` gives it, and summarises runs by
medians and quartiles: a mean ± std lets one outlier run drag a bar past what is possible.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from brainseg.report.collect import Sweep

# The figure API without pyplot: no GUI backend and no global state, safe in any process.

# Okabe & Ito's palette, told apart with every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
# The study's models keep their colours in every report, whatever else a sweep compares.
FIXED_COLORS = {"unet": PALETTE[0], "fpn": PALETTE[1]}
CURVES = (("val/dice", "validation Dice", "Dice"), ("train/loss", "training loss", "loss"))
# Above this max/min ratio the time axis is logarithmic (CPU runs next to the study's GPU ones).
LOG_TIME_RATIO = 10.0


def model_colors(models: Iterable[str]) -> dict[str, str]:
    """One colour per model (or variant): unet and fpn always get the same two, the others the
    rest of the palette in sorted order, so a figure's colours never depend on plotting order."""
    colors = {m: FIXED_COLORS[m] for m in models if m in FIXED_COLORS}
    free = [c for c in PALETTE if c not in FIXED_COLORS.values()]
    others = sorted({m for m in models if m not in FIXED_COLORS})
    colors |= {m: free[i % len(free)] for i, m in enumerate(others)}
    return colors


def shown_variants(sweep: Sweep) -> list[str]:
    """The variants with a used run, in sweep order: the models every figure shows."""
    return [v for v in sweep.variants if sweep.runs_of(v)]


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def learning_curves(sweep: Sweep, path: Path) -> Path | None:
    fig = learning_curves_figure(sweep)
    return None if fig is None else save(fig, path)


def learning_curves_figure(sweep: Sweep) -> Figure | None:
    """Validation Dice and training loss per epoch: each run a thin line, the median over runs
    a thick one, per model; None when no run has a log."""
    variants = shown_variants(sweep)
    histories = {
        v: [r.history for r in sweep.runs_of(v) if r.history is not None] for v in variants
    }
    if not any(histories.values()):
        return None
    colors = model_colors(variants)
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, len(CURVES))
    for ax, (key, title, ylabel) in zip(axes, CURVES, strict=True):
        for variant, runs in histories.items():
            curves = [c for c in (_column(h, key) for h in runs) if c is not None]
            if not curves:
                continue
            frame = pd.concat(curves, axis=1)  # epochs x runs
            epochs = frame.index.to_numpy() + 1
            color = colors[variant]
            ax.plot(epochs, frame.to_numpy(), color=color, lw=0.8, alpha=0.35, gid=variant)
            label = f"{variant} (n={len(curves)})"
            median = frame.median(axis=1)
            ax.plot(epochs, median, color=color, linewidth=2.2, label=label, gid=variant)
        ax.set(xlabel="epoch", ylabel=ylabel, title=f"{title}: median (thick), each run (thin)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _column(history: pd.DataFrame, key: str) -> pd.Series | None:
    # Lightning names an epoch-level value logged on_step and on_epoch `<key>_epoch`.
    for name in (key, f"{key}_epoch"):
        if name in history and history[name].notna().any():
            return history.set_index("epoch")[name].dropna()
    return None


def dice_distribution(per_image: dict[str, pd.DataFrame], path: Path) -> Path | None:
    fig = dice_distribution_figure(per_image)
    return None if fig is None else save(fig, path)


def dice_distribution_figure(per_image: dict[str, pd.DataFrame]) -> Figure | None:
    """Per-slice Dice (averaged over runs) per model: violin, box (median, quartiles) and the
    slices themselves as dots; None when no model has a slice."""
    variants = [v for v, f in per_image.items() if len(f)]
    if not variants:
        return None
    colors = model_colors(variants)
    fig = Figure(figsize=(1.8 + 2.2 * len(variants), 4.5), layout="constrained")
    ax = fig.subplots()
    data = [per_image[v]["dice"].dropna().to_numpy() for v in variants]
    positions = np.arange(1, len(variants) + 1)
    violins = ax.violinplot(data, positions, showextrema=False)
    for body, variant in zip(violins["bodies"], variants, strict=True):
        body.set(facecolor=colors[variant], edgecolor=colors[variant], alpha=0.25, gid=variant)
    ax.boxplot(
        data,
        positions=positions,
        widths=0.15,
        showfliers=False,
        medianprops={"color": "black", "linewidth": 1.5},
    )
    rng = np.random.default_rng(0)
    for pos, values, variant in zip(positions, data, variants, strict=True):
        jitter = rng.uniform(-0.12, 0.12, size=values.size)
        ax.scatter(pos + jitter, values, s=6, alpha=0.5, color=colors[variant], gid=variant)
    labels = [
        f"{v} (n={d.size})\nmedian {np.median(d):.3f}, mean {d.mean():.3f}"
        for v, d in zip(variants, data, strict=True)
    ]
    ax.set_xticks(positions, labels)
    ax.set(
        ylabel="Dice per test slice (mean over runs)",
        ylim=(-0.03, 1.03),
        title="Per-slice Dice: box = median and quartiles",
    )
    ax.grid(axis="y", alpha=0.3)
    return fig


def dice_vs_ms(sweep: Sweep, path: Path, study: pd.DataFrame | None = None) -> Path | None:
    fig = dice_vs_ms_figure(sweep, study)
    return None if fig is None else save(fig, path)


def dice_vs_ms_figure(sweep: Sweep, study: pd.DataFrame | None = None) -> Figure | None:
    """Quality against speed: a dot per run, the median per model with bars from the first to
    the third quartile, the study's published mean ± std as hollow marks; None without timings.
    The time axis stays positive, and turns logarithmic when the times span a wide range."""
    variants = shown_variants(sweep)
    colors = model_colors(variants)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    times, medians = [], {}
    for variant in variants:
        runs = [r for r in sweep.runs_of(variant) if {"dice", "inference_ms"} <= r.test.keys()]
        if not runs:
            continue
        ms = np.array([r.test["inference_ms"] for r in runs], dtype=float)
        dice = np.array([r.test["dice"] for r in runs], dtype=float)
        ax.scatter(ms, dice, color=colors[variant], alpha=0.45, s=18, gid=variant)
        bars = ax.errorbar(
            np.median(ms),
            np.median(dice),
            xerr=_quartile_bars(ms),
            yerr=_quartile_bars(dice),
            color=colors[variant],
            marker="o",
            markersize=8,
            capsize=4,
            label=f"{variant}: median, quartiles (n={len(runs)})",
        )
        _name(bars, variant)
        times.append(ms)
        medians[variant] = (float(np.median(ms)), float(np.median(dice)))
    if not times:
        return None
    front = pareto_front(medians)
    if len(medians) > 2 and len(front) > 1:
        xs, ys = zip(*(medians[v] for v in front), strict=True)
        ax.plot(
            xs, ys, color="grey", linestyle="--", linewidth=1, label="Pareto front", gid="pareto"
        )
    if study is not None:
        times += _study_marks(ax, study, colors)
    _time_axis(ax, np.concatenate(times))
    ax.set(
        xlabel="inference time per image (ms, batch 1)",
        ylabel="test Dice",
        title="Quality against speed (dots: single runs)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The variants no other is both faster and better than, fastest first.

    Args:
        points: variant -> (ms, Dice)."""
    front, best = [], -np.inf
    for variant, (_, dice) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if dice > best:
            front.append(variant)
            best = dice
    return front


def _quartile_bars(values: np.ndarray) -> np.ndarray:
    """Distances from the median down to the first and up to the third quartile, (2, 1)."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return np.array([[median - q1], [q3 - median]])


def _study_marks(ax, study: pd.DataFrame, colors: dict[str, str]) -> list[np.ndarray]:
    """The study's models (it publishes mean ± std only), hollow, in the colour of the same
    model here; returns the times they span, for the axis limits."""
    spans = []
    for marker, (model, rows) in zip("sDv^", study.groupby("model", sort=False), strict=False):
        rows = rows.set_index("metric")
        ms, ms_std = rows.loc["inference_ms", ["mean", "std"]]
        bars = ax.errorbar(
            ms,
            rows.loc["dice", "mean"],
            xerr=ms_std,
            yerr=rows.loc["dice", "std"],
            color=colors.get(model, "grey"),
            marker=marker,
            mfc="none",
            capsize=3,
            linestyle="none",
            label=f"study {rows['label'].iloc[0]}: mean ± std (its GPU)",
        )
        _name(bars, f"study {model}")
        spans.append(np.array([ms - ms_std, ms + ms_std]))
    return spans


def _name(bars: ErrorbarContainer, gid: str) -> None:
    # The model's name as the id of each part (as of every per-model artist): a reader of the
    # Figure (a test, an SVG) finds what belongs to which model.
    for artist in bars.get_children():
        artist.set_gid(gid)


def _time_axis(ax, times: np.ndarray) -> None:
    """Limits around the positive times only: a bar reaching below 0 ms is cut, never shown."""
    positive = times[np.isfinite(times) & (times > 0)]
    if positive.size == 0:
        return
    low, high = positive.min(), positive.max()
    if high / low > LOG_TIME_RATIO:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.5, high * 1.5)
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        return
    pad = 0.08 * (high - low) if high > low else 0.1 * low
    ax.set_xlim(max(low - pad, low / 2), high + pad)


def reliability(sweep: Sweep, path: Path) -> Path | None:
    fig = reliability_figure(sweep)
    return None if fig is None else save(fig, path)


def pooled_reliability(runs: Iterable) -> dict[str, np.ndarray] | None:
    """The reliability bins of runs (metrics.json `reliability`) added up: count, mean
    confidence and tumour frequency per probability bin; None when no run recorded them."""
    recorded = [r.metrics["reliability"] for r in runs if r.metrics.get("reliability")]
    if not recorded:
        return None
    keys = ("count", "confidence_sum", "positive_sum")
    sums = {k: np.sum([r[k] for r in recorded], axis=0) for k in keys}
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": sums["count"],
            "confidence": sums["confidence_sum"] / sums["count"],
            "frequency": sums["positive_sum"] / sums["count"],
            "ece": float(np.abs(sums["confidence_sum"] - sums["positive_sum"]).sum())
            / float(sums["count"].sum()),
        }


def reliability_figure(sweep: Sweep) -> Figure | None:
    """Pixel-level reliability diagram per variant, its runs' bins pooled: tumour frequency
    against mean predicted probability per bin (on the diagonal: calibrated), and each bin's
    share of pixels (log scale); None when no run recorded its bins."""
    variants = shown_variants(sweep)
    pooled = {v: p for v in variants if (p := pooled_reliability(sweep.runs_of(v)))}
    if not pooled:
        return None
    colors = model_colors(variants)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    curve, share = fig.subplots(1, 2)
    curve.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for variant, bins in pooled.items():
        used = bins["count"] > 0
        n = len(sweep.runs_of(variant))
        curve.plot(
            bins["confidence"][used],
            bins["frequency"][used],
            marker="o",
            color=colors[variant],
            label=f"{variant} (n={n}): ECE {bins['ece']:.4f}",
            gid=variant,
        )
        share.plot(
            bins["confidence"][used],
            bins["count"][used] / bins["count"].sum(),
            marker="o",
            color=colors[variant],
            gid=variant,
        )
    curve.set(
        xlabel="mean predicted tumor probability (bin)",
        ylabel="tumor frequency",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability of pixel probabilities (runs pooled)",
    )
    share.set(
        xlabel="mean predicted tumor probability (bin)",
        ylabel="share of pixels",
        yscale="log",
        title="Pixels per bin",
    )
    for ax in (curve, share):
        ax.grid(alpha=0.3)
    curve.legend(fontsize="small")
    return fig
