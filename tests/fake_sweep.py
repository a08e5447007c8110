"""Writes sweep directories as brainseg.train does, with known numbers, for report tests."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from brainseg.identity import variant_key

# (model, seed, image index, patient index) -> per-image Dice
DiceFn = Callable[[str, int, int, int], float]

BASE_DICE = {"unet": 0.80, "fpn": 0.85}
BASE_MS = {"unet": 5.0, "fpn": 11.0}


def default_dice(model: str, seed: int, image: int, patient: int) -> float:
    rng = np.random.default_rng([seed, image, len(model)])
    return float(np.clip(BASE_DICE.get(model, 0.7) + 0.1 * rng.standard_normal(), 0, 1))


def make_sweep(
    root: Path,
    models: Sequence[str] = ("unet", "fpn"),
    seeds: Sequence[int] = (0, 1),
    n_images: int = 30,
    n_patients: int = 6,
    dice: DiceFn = default_dice,
    missing: Sequence[tuple[str, int]] = (),
    failed: Sequence[tuple[str, int]] = (),
    epochs: int = 3,
    wandb: bool = False,
    with_pids: bool = True,
    folds: Sequence[int] = (),
    debug: Sequence[tuple] = (),
    split: str = "patient",
    tumor_free: int = 0,
    settings: dict | None = None,
    test_set: str | None = None,
    named: bool = False,
) -> Path:
    """A sweep `model=... seed=...` (and `data.fold=...` with `folds`: each fold tests other
    slices and patients) under `root`; returns `root`. `missing`, `failed` and `debug` (runs
    that record `"status": "debug"`) name (model, seed) or, with folds, (model, seed, fold).
    The last `tumor_free` slices of each test set have no tumor; the runs then record
    dice_tumor, empty_correct and fp_lesions_per_empty, as brainseg.train does. With `settings`
    (what the runs are, beside the model) and `test_set` (the hash of their test slices), the runs
    record both in metrics.json as brainseg.train does; without, they are older records. Job
    folders are numbered 0..N, as Hydra's default names them, or `named` as brainseg names them
    now (`unet-seed0`, `fpn-seed1-fold2`)."""
    root.mkdir(parents=True, exist_ok=True)
    logger = {"wandb": {"project": "brainseg-test", "entity": None}} if wandb else {}
    task = [f"model={','.join(models)}", f"seed={','.join(map(str, seeds))}"]
    if folds:
        task.append(f"data.fold={','.join(map(str, folds))}")
    _yaml(
        root / "multirun.yaml",
        {
            "hydra": {
                "overrides": {"task": task},
                "sweep": {
                    "dir": str(root),
                    "subdir": "${brainseg.job_name:}" if named else "${hydra.job.num}",
                },
            },
            "seed": 0,
            "model": {"name": models[0]},
            "data": {"fold": None},
            "logger": logger,
        },
    )
    for num, (model, seed, fold) in enumerate(itertools.product(models, seeds, folds or [None])):
        key = (model, seed) if fold is None else (model, seed, fold)
        if key in missing:
            continue
        fold_part = "" if fold is None else f"-fold{fold}"
        job = root / (f"{model}-seed{seed}{fold_part}" if named else str(num))
        overrides = [f"model={model}", f"seed={seed}"]
        overrides += [] if fold is None else [f"data.fold={fold}"]
        _yaml(
            job / ".hydra" / "config.yaml",
            {"seed": seed, "model": {"name": model}, "data": {"fold": fold}, "logger": logger},
        )
        _yaml(job / ".hydra" / "overrides.yaml", overrides)
        if key in failed:
            (job / "error.txt").write_text(
                "Traceback (most recent call last):\nRuntimeError: boom\n"
            )
            continue
        per_image = _per_image(model, seed, n_images, n_patients, dice, with_pids, fold or 0)
        if tumor_free:
            per_image = _without_tumor(per_image, tumor_free)
        per_image.drop(columns="fp_lesions", errors="ignore").to_csv(
            job / "per_image.csv", index=False
        )
        _history(model, seed, epochs).to_csv(_mkdir(job / "csv") / "metrics.csv", index=False)
        record = _metrics(model, seed, per_image, epochs) | {"fold": fold, "split": split}
        if settings is not None:
            record["settings"] = {"model.name": model, **settings}
        record["variant"] = variant_key(record.get("settings", {"model.name": model}))
        if test_set is not None:
            record["protocol"] = {"test_set": f"{test_set}-{fold}", "test_slices": n_images}
        if key in debug:
            record |= {"status": "debug", "debug": "trainer.max_epochs=0"}
        (job / "metrics.json").write_text(json.dumps(record))
    return root


def _per_image(model, seed, n_images, n_patients, dice, with_pids, fold) -> pd.DataFrame:
    rows = []
    for i in range(fold * n_images, (fold + 1) * n_images):
        patient = i % n_patients + fold * n_patients
        d = dice(model, seed, i, patient)
        lesions = 1 + i % 2
        rows.append(
            {
                "id": str(i + 1),
                "pid": f"P{patient}" if with_pids else "",
                "label": 1 + patient % 3,
                "dice": d,
                "precision": min(1.0, d + 0.05),
                "recall": max(0.0, d - 0.05),
                "lesions": lesions,
                "lesions_detected": lesions if d > 0.5 else 0,
                "pred_area": 100,
                "true_area": 60 + 20 * (i % 5),  # sizes for the tertiles
            }
        )
    return pd.DataFrame(rows)


def _without_tumor(per_image: pd.DataFrame, n: int) -> pd.DataFrame:
    """The last n slices become tumor-free; every other one of them gets a false positive."""
    frame = per_image.copy()
    rows = frame.index[-n:]
    hit = np.arange(n) % 2 == 1
    frame.loc[rows, ["label", "lesions", "lesions_detected", "true_area"]] = 0
    frame.loc[rows, "pred_area"] = np.where(hit, 20, 0)
    for column in ("dice", "precision", "recall"):
        frame.loc[rows, column] = np.where(hit, 0.0, 1.0)
    frame["fp_lesions"] = 0  # for _metrics only; per_image.csv has no such column
    frame.loc[rows, "fp_lesions"] = np.where(hit, 2, 0)
    return frame


def _metrics(model, seed, per_image: pd.DataFrame, epochs: int) -> dict:
    ms = BASE_MS.get(model, 8.0) + 0.1 * seed
    empty = per_image["true_area"] == 0
    extra = {}
    if empty.any():
        extra = {
            "dice_tumor": float(per_image.loc[~empty, "dice"].mean()),
            "empty_correct": float((per_image.loc[empty, "pred_area"] == 0).mean()),
            "fp_lesions_per_empty": float(per_image.loc[empty, "fp_lesions"].mean()),
        }
    return {
        "status": "ok",
        "model": model,
        "seed": seed,
        "fold": None,
        "split": "auto",
        "image_size": 64,
        "params": 1000,
        "epochs": epochs,
        "trainer_precision": "32-true",
        "device": "cpu",
        "wall_time_s": 1.0,
        "git_commit": None,
        "best_checkpoint": None,
        "best_val_dice": 0.5,
        "test": {
            "dice": float(per_image["dice"].mean()),
            "dice_pooled": float(per_image["dice"].mean()) + 0.01,
            "precision": float(per_image["precision"].mean()),
            "recall": float(per_image["recall"].mean()),
            "lesion_recall": float(
                per_image["lesions_detected"].sum() / per_image["lesions"].sum()
            ),
            "loss": 0.3,
            "inference_ms": ms,
            "inference_ms_std": 0.1,
            "inference_ms_median": ms,
            "images_per_s": 1000 / ms,
            **extra,
        },
    }


def _history(model: str, seed: int, epochs: int) -> pd.DataFrame:
    # Lightning's CSV layout: the validation and the training values of an epoch on separate rows.
    rows = []
    for epoch in range(epochs):
        val = BASE_DICE.get(model, 0.7) * (epoch + 1) / epochs + 0.01 * seed
        rows.append(
            {
                "epoch": epoch,
                "step": 10 * epoch + 9,
                "val/dice": val,
                "val/loss": 1 - val,
                "train/loss_epoch": np.nan,
            }
        )
        rows.append(
            {
                "epoch": epoch,
                "step": 10 * epoch + 9,
                "val/dice": np.nan,
                "val/loss": np.nan,
                "train/loss_epoch": 1.0 / (epoch + 1) + 0.01 * seed,
            }
        )
    return pd.DataFrame(rows)


def _yaml(path: Path, data) -> None:
    _mkdir(path.parent)
    path.write_text(yaml.safe_dump(data))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
