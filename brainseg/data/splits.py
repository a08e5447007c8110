"""Train/val/test splits by patient or by image, fixed by their own seed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.atomic import write_csv

SUBSETS = ("train", "val", "test")
MODES = ("auto", "patient", "image")


def make_split(
    ids: Sequence[str],
    pids: Sequence[str],
    mode: str = "auto",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    fold: int | None = None,
    folds: Sequence[int] | None = None,
) -> np.ndarray:
    """Subset name ("train", "val" or "test") of every slice.

    The split depends on `seed` and the data alone (never on the global random state), so
    every model and training seed of a sweep is tested on the same slices.

    Args:
        ids: slice ids.
        pids: patient id per slice, "" where unknown.
        mode: "patient" keeps each patient's slices in one subset; "image" splits slices at
            random; "auto" is "patient" when every pid is known, else "image".
        fractions: train, val and test shares, counted in slices; patient splits come as
            close to them as whole patients allow.
        seed: seed of the split.
        fold: 1..5 to take the test set from `folds` (cross-validation); the rest is split
            into train and val in the ratio fractions[0] : fractions[1].
        folds: fold (1..5) per slice, 0 where unknown; needed with `fold`.
    """
    ids, pids = np.asarray(ids, dtype=str), np.asarray(pids, dtype=str)
    if len(ids) != len(pids):
        raise ValueError(f"{len(ids)} ids but {len(pids)} pids: give one pid per slice")
    fractions = _check_fractions(fractions)
    mode = resolve_mode(mode, pids)
    groups = pids if mode == "patient" else ids
    subsets = np.empty(len(ids), dtype="<U5")
    if fold is None:
        subsets[:] = _split_groups(groups, fractions, seed)
        return subsets
    test = _fold_mask(fold, folds, len(ids))
    subsets[test] = "test"
    train_val = np.array([fractions[0], fractions[1], 0.0]) / (fractions[0] + fractions[1])
    subsets[~test] = _split_groups(groups[~test], train_val, seed)
    return subsets


def resolve_mode(mode: str, pids: np.ndarray) -> str:
    """ "patient" or "image" for a requested mode, checking that patient mode is possible."""
    if mode not in MODES:
        raise ValueError(f"split={mode!r} is not one of {', '.join(MODES)}")
    known = len(pids) > 0 and all(p != "" for p in pids)
    if mode == "auto":
        return "patient" if known else "image"
    if mode == "patient" and not known:
        raise ValueError(
            "split=patient needs a patient id for every slice, but some are unknown: add a pid "
            "column to metadata.csv (sample_id,pid) or use data.split=image"
        )
    return mode


def _split_groups(groups: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
    """Assign whole groups to subsets so that slice counts come close to the fractions."""
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    cum = np.concatenate([[0], np.cumsum(sizes[order])])  # slices in the first k groups
    wanted = np.flatnonzero(fractions > 0)
    if len(names) < len(wanted):
        raise ValueError(
            f"only {len(names)} patients/images for {len(wanted)} non-empty subsets: "
            "use more data or set some data.fractions to 0"
        )
    targets = np.cumsum(fractions)[:-1] * cum[-1]
    cuts, low = [], 0
    for j, target in enumerate(targets):
        need_here = int(fractions[j] > 0)
        need_after = int(np.sum(fractions[j + 1 :] > 0))
        candidates = np.arange(low + need_here, len(names) - need_after + 1)
        low = int(candidates[np.argmin(np.abs(cum[candidates] - target))])
        cuts.append(low)
    subset_of_rank = np.searchsorted(np.array(cuts), np.arange(len(names)), side="right")
    subset_of_group = np.empty(len(names), dtype=int)
    subset_of_group[order] = subset_of_rank
    return np.array(SUBSETS)[subset_of_group[inverse]]


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    array = np.asarray(list(fractions), dtype=float)
    if array.shape != (3,) or (array < 0).any() or not np.isclose(array.sum(), 1.0):
        raise ValueError(
            f"data.fractions={list(fractions)} must be three non-negative train/val/test "
            "shares that sum to 1, e.g. [0.7, 0.15, 0.15]"
        )
    if array[0] == 0:
        raise ValueError(f"data.fractions={list(fractions)} leaves no training slices")
    return array


def _fold_mask(fold: int, folds: Sequence[int] | None, n: int) -> np.ndarray:
    if folds is None or len(folds) != n or any(int(f) == 0 for f in folds):
        raise ValueError(
            f"data.fold={fold} needs the cross-validation fold of every slice, which this source "
            "does not give: add a fold column to metadata.csv (or cvind.mat for figshare), "
            "or set data.fold=null"
        )
    folds = np.asarray(folds, dtype=int)
    if fold not in set(folds.tolist()):
        raise ValueError(f"data.fold={fold} is not one of the folds {sorted(set(folds.tolist()))}")
    return folds == fold


def write_split_csv(
    path: str | os.PathLike, ids: Sequence[str], pids: Sequence[str], subsets: Sequence[str]
) -> Path:
    """Write `id,pid,subset` rows to `path` (atomically)."""
    rows = [{"id": i, "pid": p, "subset": s} for i, p, s in zip(ids, pids, subsets, strict=True)]
    return write_csv(path, rows)
