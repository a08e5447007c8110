"""Train/val/test splits by patient or by image, fixed by their own seed."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.atomic import write_csv
from brainseg.data.sources import first_few

SUBSETS = ("train", "val", "test")
MODES = ("auto", "patient", "image")

log = logging.getLogger(__name__)


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
            random; "auto" is "patient" when every pid is known and "image" when none is
            (see `resolve_mode`).
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
    fractions = check_fractions(fractions)
    mode = resolve_mode(mode, ids, pids)
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


def resolve_mode(
    mode: str,
    ids: Sequence[str],
    pids: Sequence[str],
    pid_file: str | os.PathLike | None = None,
) -> str:
    """ "patient" or "image" for a requested mode; refuses a split that could leak patients.

    "auto" splits by patient when every slice has a pid, and by image, with a warning, when
    none has. Some pids blank is an error for "auto" and "patient": a slice without a pid
    may belong to any patient, so its patient could sit in more than one subset. "image"
    accepts any pids.

    Args:
        mode: "auto", "patient" or "image".
        ids, pids: slice ids and patient ids ("" where unknown); errors name the ids.
        pid_file: where the pids come from (e.g. metadata.csv), named in errors and warnings.
    """
    if mode not in MODES:
        raise ValueError(f"split={mode!r} is not one of {', '.join(MODES)}")
    if mode == "image":
        return "image"
    ids, pids = np.asarray(ids, dtype=str), np.asarray(pids, dtype=str)
    blank = pids == ""
    if not blank.any():
        return "patient"
    if not blank.all():
        lead = " needs a patient id for every slice, but" if mode == "patient" else ":"
        raise ValueError(
            f"split={mode}{lead} {int(blank.sum())} of {len(pids)} slices have no patient id "
            f"({first_few(ids[blank].tolist())}){_in(pid_file)}"
            f"{' (no row, or an empty pid)' if pid_file else ''} while the other "
            f"{int((~blank).sum())} have one, so a patient could land in more than one of "
            f"train, val and test: {_add_pids(pid_file)}, or pass data.split=image to accept "
            "a per-slice split"
        )
    if mode == "patient":
        raise ValueError(
            f"split=patient needs a patient id for every slice, but none of the {len(pids)} "
            f"slices has one{_in(pid_file)}: {_add_pids(pid_file)}, or use data.split=image"
        )
    log.warning(
        "data.split=auto: no slice has a patient id%s, so the split is per slice (by image): "
        "slices of one patient may land in different subsets (train, val, test). To split by "
        "patient, %s; to accept the per-slice split and silence this, pass data.split=image",
        _in(pid_file),
        _add_pids(pid_file),
    )
    return "image"


def _in(pid_file: str | os.PathLike | None) -> str:
    return f" in {pid_file}" if pid_file else ""


def _add_pids(pid_file: str | os.PathLike | None) -> str:
    if pid_file:
        return f"give every slice a pid in {pid_file} (columns sample_id,pid)"
    return "give every slice a patient id"


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


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """`data.fractions` as an array, after checking it is three train/val/test shares of 1."""
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


def split_fingerprint(ids: Sequence[str], subsets: Sequence[str]) -> str:
    """sha256 (hex) of the sorted (slice id, subset) pairs: two splits have the same fingerprint
    exactly when they put every slice in the same subset, whatever order the slices come in."""
    digest = hashlib.sha256()
    for sample_id, subset in sorted(zip(map(str, ids), map(str, subsets), strict=True)):
        digest.update(f"{sample_id}\t{subset}\n".encode())
    return digest.hexdigest()


def write_split_csv(
    path: str | os.PathLike,
    ids: Sequence[str],
    pids: Sequence[str],
    subsets: Sequence[str],
    mode: str,
) -> Path:
    """Write `id,pid,subset,split` rows to `path` (atomically); split is the resolved mode."""
    if mode not in ("patient", "image"):
        raise ValueError(
            f"split={mode!r}: split.csv records the split used, patient or image "
            "(resolve it with `resolve_mode`)"
        )
    rows = [
        {"id": i, "pid": p, "subset": s, "split": mode}
        for i, p, s in zip(ids, pids, subsets, strict=True)
    ]
    return write_csv(path, rows)
