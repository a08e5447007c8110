"""Report figures (PNG): learning curves, per-image Dice distributions, Dice against speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from brainseg.report.collect import Sweep

# The figure API without pyplot: no GUI backend and no global state, safe in any process.
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
CURVES = (("val/dice", "validation Dice"), ("train/loss", "training loss"))


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def learning_curves(sweep: Sweep, path: Path) -> Path | None:
    """Validation Dice and training loss per epoch: mean over runs, min-max band, per model."""
    histories = {
        v: [r.history for r in sweep.runs_of(v) if r.history is not None] for v in sweep.variants
    }
    if not any(histories.values()):
        return None
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, len(CURVES))
    for ax, (key, title) in zip(axes, CURVES, strict=False):
        for color, (variant, runs) in zip(COLORS * 3, histories.items(), strict=False):
            curves = [_column(h, key) for h in runs]
            curves = [c for c in curves if c is not None]
            if not curves:
                continue
            frame = pd.concat(curves, axis=1)  # epochs x runs
            epochs = frame.index.to_numpy() + 1
            ax.plot(epochs, frame.mean(axis=1), color=color, label=f"{variant} (n={len(curves)})")
            ax.fill_between(epochs, frame.min(axis=1), frame.max(axis=1), color=color, alpha=0.2)
        ax.set(xlabel="epoch", title=f"{title} (mean, min–max over runs)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def _column(history: pd.DataFrame, key: str) -> pd.Series | None:
    # Lightning names an epoch-level value logged on_step and on_epoch `<key>_epoch`.
    for name in (key, f"{key}_epoch"):
        if name in history and history[name].notna().any():
            return history.set_index("epoch")[name].dropna()
    return None


def dice_distribution(per_image: dict[str, pd.DataFrame], path: Path) -> Path | None:
    """Per-slice Dice (averaged over runs) per model: violin, box and the points themselves."""
    variants = [v for v, f in per_image.items() if len(f)]
    if not variants:
        return None
    fig = Figure(figsize=(1.8 + 2.2 * len(variants), 4.5))
    ax = fig.subplots()
    data = [per_image[v]["dice"].dropna().to_numpy() for v in variants]
    positions = np.arange(1, len(variants) + 1)
    ax.violinplot(data, positions, showextrema=False)
    ax.boxplot(data, positions=positions, widths=0.15, showfliers=False)
    rng = np.random.default_rng(0)
    for pos, values, color in zip(positions, data, COLORS * 3, strict=False):
        jitter = rng.uniform(-0.12, 0.12, size=values.size)
        ax.scatter(pos + jitter, values, s=6, alpha=0.5, color=color)
    labels = [f"{v}\n(mean {d.mean():.3f})" for v, d in zip(variants, data, strict=True)]
    ax.set_xticks(positions, labels)
    ax.set(
        ylabel="Dice per test slice (mean over runs)",
        ylim=(-0.03, 1.03),
        title="Per-slice Dice distribution",
    )
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def dice_vs_ms(sweep: Sweep, path: Path, study: pd.DataFrame | None = None) -> Path | None:
    """Quality against speed: a point per run, mean ± std per model, the study's as hollow marks."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    plotted = False
    for color, variant in zip(COLORS * 3, sweep.variants, strict=False):
        runs = [r for r in sweep.runs_of(variant) if {"dice", "inference_ms"} <= r.test.keys()]
        if not runs:
            continue
        ms = np.array([r.test["inference_ms"] for r in runs])
        dice = np.array([r.test["dice"] for r in runs])
        ax.scatter(ms, dice, color=color, alpha=0.5, s=18)
        ax.errorbar(
            ms.mean(),
            dice.mean(),
            xerr=_std(ms),
            yerr=_std(dice),
            color=color,
            marker="o",
            markersize=8,
            capsize=4,
            label=f"{variant} (n={len(runs)})",
        )
        plotted = True
    if not plotted:
        return None
    if study is not None:
        for marker, (_, rows) in zip("sDv^", study.groupby("model", sort=False), strict=False):
            rows = rows.set_index("metric")
            ax.errorbar(
                rows.loc["inference_ms", "mean"],
                rows.loc["dice", "mean"],
                xerr=rows.loc["inference_ms", "std"],
                yerr=rows.loc["dice", "std"],
                color="grey",
                marker=marker,
                mfc="none",
                capsize=3,
                linestyle="none",
                label=f"study {rows['label'].iloc[0]} (its GPU)",
            )
    low, high = ax.get_xlim()
    if low > 0 and high / low > 20:  # CPU runs next to the study's GPU timings
        ax.set_xscale("log")
    ax.set(
        xlabel="inference time per image (ms, batch 1)",
        ylabel="test Dice",
        title="Quality against speed",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0
