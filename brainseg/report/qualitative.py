"""Qualitative grids: image, truth and each model's prediction for the best, median and worst
test slices (ranked by Dice averaged over runs and models), like the study's figures 12-13."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainseg.report.collect import Run, Sweep
from brainseg.report.figures import save

log = logging.getLogger(__name__)

RANKS = ("best", "median", "worst")


def pick_slices(
    per_image: dict[str, pd.DataFrame], candidates: set[str], k: int
) -> dict[str, list[str]]:
    """The k best, median and worst slice ids among `candidates` by Dice averaged over models."""
    frames = [f.set_index("id")["dice"] for f in per_image.values()]
    mean = pd.concat(frames, axis=1).mean(axis=1, skipna=True)
    mean = mean[mean.index.isin(candidates)].dropna()
    ranked = mean.sort_values(ascending=False, kind="stable").index.tolist()
    if not ranked:
        return {}
    mid = max(0, len(ranked) // 2 - k // 2)
    return {"best": ranked[:k], "median": ranked[mid : mid + k], "worst": ranked[::-1][:k]}


def qualitative_grids(
    sweep: Sweep, per_image: dict[str, pd.DataFrame], out_dir: Path, k: int = 4
) -> list[Path]:
    """Writes qualitative_{best,median,worst}.png; [] (with a warning) when the checkpoints or
    the data of the runs cannot be loaded."""
    firsts = {v: runs[0] for v in per_image if (runs := _with_checkpoint(sweep.runs_of(v)))}
    if len(firsts) < len(per_image) or not firsts:
        log.warning("qualitative grids skipped: a model has no run with checkpoints/best.ckpt")
        return []
    # Only slices every shown run was tested on: a prediction on a training slice would flatter.
    candidates = set.intersection(*(set(r.per_image["id"]) for r in firsts.values()))
    picks = pick_slices(per_image, candidates, k)
    if not picks:
        return []
    wanted = sorted({i for ids in picks.values() for i in ids})
    try:
        slices = {v: _predict_slices(run, wanted) for v, run in firsts.items()}
    except Exception as error:  # a report without pictures beats no report
        log.warning(
            "qualitative grids skipped: could not predict the test slices (%s: %s)",
            type(error).__name__,
            error,
        )
        return []
    paths = []
    for rank in RANKS:
        path = out_dir / f"qualitative_{rank}.png"
        paths.append(_grid(rank, picks[rank], slices, path))
    return paths


def _with_checkpoint(runs: list[Run]) -> list[Run]:
    ok = [r for r in runs if r.per_image is not None and _checkpoint(r) is not None]
    return sorted(ok, key=lambda r: (r.seed if r.seed is not None else 0, r.fold or 0))


def _checkpoint(run: Run) -> Path | None:
    path = run.job_dir / "checkpoints" / "best.ckpt"
    if path.is_file():
        return path
    recorded = run.metrics.get("best_checkpoint")
    return Path(recorded) if recorded and Path(recorded).is_file() else None


def _predict_slices(run: Run, ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{id: {"image", "mask", "prob"}} at the run's training size, from its own test set."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from brainseg.module import load_module

    module = load_module(_checkpoint(run))
    config = OmegaConf.create(module.hparams.config)
    datamodule = instantiate(config.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    dataset = datamodule.datasets["test"]
    index = {sample_id: i for i, sample_id in enumerate(dataset.ids)}
    # The uint8 slice as cached (before normalisation) is what a reader should see.
    cached = {str(sample_id): i for i, sample_id in enumerate(datamodule.data.ids)}
    dice = run.per_image.set_index("id")["dice"]
    out = {}
    with torch.inference_mode():
        for sample_id in ids:
            if sample_id not in index:
                raise KeyError(f"slice {sample_id} is not in {run.name}'s test set")
            item = dataset[index[sample_id]]
            prob = torch.sigmoid(module(item["image"][None]).float())[0, 0].numpy()
            out[sample_id] = {
                "image": datamodule.data.images[cached[sample_id]],
                "mask": item["mask"][0].numpy(),
                "prob": prob,
                "dice": float(dice.get(sample_id, np.nan)),
                "run": run.name,
            }
    return out


def _grid(rank: str, ids: list[str], slices: dict[str, dict], path: Path) -> Path:
    variants = list(slices)
    columns = ["image", "truth", *variants]
    fig = Figure(figsize=(2.4 * len(columns), 2.5 * len(ids)))
    axes = np.atleast_2d(fig.subplots(len(ids), len(columns), squeeze=False))
    first = slices[variants[0]]
    for row, sample_id in enumerate(ids):
        image, mask = first[sample_id]["image"], first[sample_id]["mask"]
        _show(axes[row, 0], image, None, f"slice {sample_id}")
        _show(axes[row, 1], image, mask, "truth", color=(0.1, 0.9, 0.1))
        for col, variant in enumerate(variants, start=2):
            shown = slices[variant][sample_id]
            _show(
                axes[row, col],
                shown["image"],
                shown["prob"] >= 0.5,
                f"{variant}: Dice {shown['dice']:.3f}",
                color=(0.9, 0.2, 0.1),
            )
    runs = ", ".join(s[ids[0]]["run"] for s in slices.values())
    fig.suptitle(
        f"{rank} test slices by Dice averaged over runs and models; predictions of {runs}",
        fontsize=9,
    )
    return save(fig, path)


def _show(ax, image: np.ndarray, mask: np.ndarray | None, title: str, color=(1, 0, 0)) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    if mask is not None:
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask > 0] = (*color, 0.45)
        ax.imshow(overlay)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
