"""The recipes tried on the cpu protocol, one row per recipe and model, best validation first.

    python benchmarks/tuning_table.py docs/results/cpu-bf16 docs/results/converge-unet ...

Reads every finished run of the given sweeps (or their archives, benchmarks/archive_sweep.py)
and groups them by what was trained: network, image size, batch, learning rate, epochs and
precision. Rows are ranked by the best validation Dice, the only number a recipe is chosen by;
the test Dice at that best epoch is shown for the record. docs/results.md holds this table as
printed for the archives under docs/results/ (tests/test_results.py checks it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from brainseg.report.collect import Run, load_sweep

RECIPE = ("model", "network", "size", "batch", "lr", "epochs", "precision")
HEADER = (
    "| model | network | size | batch | lr | epochs | precision | runs "
    "| val Dice | best epoch | test Dice | min per run |"
)


def recipe_rows(sweeps: list[Path]) -> pd.DataFrame:
    """One row per finished run: its recipe, best val Dice (and epoch), test Dice, minutes."""
    rows = [{**recipe(run), **outcome(run)} for sweep in sweeps for run in load_sweep(sweep).ok]
    if not rows:
        raise SystemExit(f"no finished run in {', '.join(map(str, sweeps))}")
    return pd.DataFrame(rows)


def recipe(run: Run) -> dict:
    cfg = run.config
    return {
        "model": run.model,
        "network": network_label((cfg.get("networks") or {}).get(run.model) or {}),
        "size": cfg["data"]["image_size"],
        "batch": cfg["data"]["batch_size"],
        "lr": float(cfg["optimizer"]["lr"]),
        "epochs": cfg["trainer"]["max_epochs"],
        "precision": run.metrics.get("trainer_precision"),
    }


def network_label(sizes: dict) -> str:
    """The leading size the preset gave a network, its first `networks.<model>` entry: a name
    as it is (`resnet18`), a number after the key's last word (`width 16`); `defaults` when the
    preset did not size it."""
    if not sizes:
        return "defaults"
    key, value = next(iter(sizes.items()))
    return value if isinstance(value, str) else f"{key.split('_')[-1]} {value}"


def outcome(run: Run) -> dict:
    history = run.history
    best_epoch = np.nan
    if history is not None and "val/dice" in history and history["val/dice"].notna().any():
        best_epoch = int(history.loc[history["val/dice"].idxmax(), "epoch"]) + 1  # 1-based
    return {
        "val": run.metrics["best_val_dice"],
        "best_epoch": best_epoch,
        "test": run.test["dice"],
        "minutes": run.metrics["wall_time_s"] / 60,
    }


def table(rows: pd.DataFrame) -> str:
    """The markdown table: recipes grouped over seeds, by model, best val Dice first."""
    groups = rows.groupby(list(RECIPE), sort=False)
    summary = groups.agg(
        runs=("val", "size"),
        val=("val", "mean"),
        val_std=("val", "std"),
        best_epoch=("best_epoch", "median"),
        test=("test", "mean"),
        test_std=("test", "std"),
        minutes=("minutes", "mean"),
    ).reset_index()
    by_val = ["model", "val"]  # "unet" > "fpn": the U-Net rows first
    summary = summary.sort_values(by_val, ascending=[False, False], kind="stable")
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    for r in summary.itertuples():
        cells = [r.model, r.network, f"{r.size}²", r.batch, f"{r.lr:g}", r.epochs, r.precision]
        cells += [r.runs, _mean_std(r.val, r.val_std), f"{r.best_epoch:g}"]
        cells += [_mean_std(r.test, r.test_std), f"{r.minutes:.1f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep folders or their archives")
    args = p.parse_args(argv)
    print(table(recipe_rows(args.sweeps)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
