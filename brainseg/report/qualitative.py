"""Qualitative grids: the image and each model's prediction, coloured by outcome against the
truth, for the best, median and worst test slices (ranked by Dice averaged over runs and
models), like the study's figures 12-13."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm import tqdm

from brainseg.data.sources import LABEL_NAMES
from brainseg.report.collect import Run, Sweep
from brainseg.report.figures import save

if TYPE_CHECKING:  # torch loads only when a grid is drawn
    from torch import Tensor

log = logging.getLogger(__name__)

RANKS = ("best", "median", "worst")
# Okabe & Ito's yellow, vermillion and sky blue: told apart with every common colour-vision
# deficiency, and unlike the grey of the slice underneath. The truth is TP + FN.
OUTCOME_COLORS = {
    "true positive (tumor found)": "#F0E442",
    "false positive (predicted, not tumor)": "#D55E00",
    "false negative (tumor missed)": "#56B4E9",
}
OVERLAY_ALPHA = 0.65


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
        # Loading each model's data and network takes 10-30 s on a CPU: say so while it runs.
        bar = tqdm(firsts.items(), desc="qualitative grids", unit="model")
        slices = {v: _predict_slices(run, wanted) for v, run in bar}
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
        paths.append(save(grid_figure(rank, picks[rank], slices), path))
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


def run_threshold(run: Run, checkpoint_config: dict | None = None) -> float:
    """The probability threshold the run was tested with: its .hydra/config.yaml, else the
    config saved in its checkpoint."""
    for config in (run.config, checkpoint_config or {}):
        threshold = (config.get("metrics") or {}).get("threshold")
        if threshold is not None:
            return float(threshold)
    raise KeyError(
        f"{run.name}: no metrics.threshold in {run.job_dir}/.hydra/config.yaml nor in its "
        "checkpoint's config; the grids need the threshold the run was tested with"
    )


def run_precision(run: Run, checkpoint_config: dict) -> str:
    """The precision the run was tested in: its metrics.json's, else its checkpoint's."""
    from brainseg.inference import tested_precision

    return str(run.metrics.get("trainer_precision") or tested_precision(checkpoint_config))


def predict_mask(
    module: Callable[[Tensor], Tensor],
    image: Tensor,
    threshold: float,
    precision: str = "32-true",
) -> np.ndarray:
    """The (H, W) bool mask `module` predicts for one (C, H, W) image, by brainseg's one
    inference path (`brainseg.inference`) at `precision`."""
    from brainseg.inference import masks_at, predict_logits

    logits = predict_logits(module, image[None], precision)
    return masks_at(logits, tuple(image.shape[-2:]), threshold)[0].cpu().numpy()


def _predict_slices(run: Run, ids: list[str]) -> dict[str, dict]:
    """{id: {"image", "mask", "pred", "dice", "pid", "label", "run"}} at the run's training size,
    from its own test set, prepared, run and thresholded as the run was tested (its precision
    and threshold, through `brainseg.inference.Predictor`)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from brainseg.inference import Predictor
    from brainseg.module import load_module

    module = load_module(_checkpoint(run))
    config = module.hparams.config
    predictor = Predictor.from_module(
        module, precision=run_precision(run, config), threshold=run_threshold(run, config)
    )
    datamodule = instantiate(OmegaConf.create(config).data)
    datamodule.prepare_data()
    datamodule.setup("test")
    dataset = datamodule.datasets["test"]
    index = {sample_id: i for i, sample_id in enumerate(dataset.ids)}
    # The uint8 slice as cached (before normalisation) is what a reader should see.
    cached = {str(sample_id): i for i, sample_id in enumerate(datamodule.data.ids)}
    dice = run.per_image.set_index("id")["dice"]
    out = {}
    for sample_id in ids:
        if sample_id not in index:
            raise KeyError(f"slice {sample_id} is not in {run.name}'s test set")
        item = dataset[index[sample_id]]
        image = datamodule.data.images[cached[sample_id]]
        out[sample_id] = {
            "image": image,
            "mask": item["mask"][0].numpy() > 0,
            "pred": predictor.masks(predictor.preprocess(image)[None])[0].cpu().numpy(),
            "dice": float(dice.get(sample_id, np.nan)),
            "pid": str(item["pid"]),
            "label": int(item["label"]),
            "run": run.name,
        }
    return out


def outcome_overlay(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGBA (H, W, 4): each pixel in the colour of OUTCOME_COLORS for true positive, false
    positive or false negative; transparent where both truth and prediction are empty."""
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    overlay = np.zeros((*truth.shape, 4))
    for where, color in zip(
        (truth & pred, ~truth & pred, truth & ~pred), OUTCOME_COLORS.values(), strict=True
    ):
        overlay[where] = (*to_rgb(color), OVERLAY_ALPHA)
    return overlay


def slice_caption(sample_id: str, shown: dict) -> str:
    """What a tile shows, in the data's own names: `slice 12 · glioma · patient P003`."""
    kind = LABEL_NAMES.get(int(shown["label"]), f"label {shown['label']}")
    pid = shown.get("pid") or "unknown"
    return f"slice {sample_id} · {kind} · patient {pid}"


def grid_figure(rank: str, ids: list[str], slices: dict[str, dict[str, dict]]) -> Figure:
    """A row per slice: the image, then each model's prediction coloured by outcome against the
    truth (true positive, false positive, false negative), titled with the slice and its Dice.

    Args:
        rank: "best", "median" or "worst", for the title.
        ids: the slices, one row each.
        slices: model -> slice id -> {"image", "mask", "pred", "dice", "pid", "label", "run"}.
    """
    variants = list(slices)
    columns = ["image", *variants]
    fig = Figure(figsize=(2.7 * len(columns), 2.6 * len(ids) + 0.8), layout="constrained")
    axes = fig.subplots(len(ids), len(columns), squeeze=False)
    first = slices[variants[0]]
    for row, sample_id in enumerate(ids):
        caption = slice_caption(sample_id, first[sample_id])
        # The label names the patient's tumor type, also on a slice that shows none of it.
        what = "image" if first[sample_id]["mask"].any() else "image: no tumor on this slice"
        _show(axes[row, 0], first[sample_id]["image"], None, f"{caption}\n{what}")
        for col, variant in enumerate(variants, start=1):
            shown = slices[variant][sample_id]
            overlay = outcome_overlay(shown["mask"], shown["pred"])
            title = f"{caption}\n{variant}: Dice {shown['dice']:.3f}"
            _show(axes[row, col], shown["image"], overlay, title)
    handles = [Patch(color=c, label=name) for name, c in OUTCOME_COLORS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    runs = ", ".join(s[ids[0]]["run"] for s in slices.values())
    fig.suptitle(
        f"{rank} test slices by Dice averaged over runs and models; predictions of {runs}",
        fontsize=9,
    )
    return fig


def _show(ax, image: np.ndarray, overlay: np.ndarray | None, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    if overlay is not None:
        ax.imshow(overlay, interpolation="nearest")
    ax.set_title(title, fontsize=7.5)
    ax.axis("off")
