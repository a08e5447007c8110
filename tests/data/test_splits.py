import random

import numpy as np
import pandas as pd
import pytest
import torch

from brainseg.data.splits import make_split, write_split_csv


def patients(n_patients: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Slice ids and pids with 1 to 20 slices per patient, like the figshare set."""
    sizes = np.random.default_rng(seed).integers(1, 21, n_patients)
    pids = np.repeat([f"P{i}" for i in range(n_patients)], sizes)
    return np.array([str(i) for i in range(len(pids))]), pids


def test_patient_split_is_disjoint_and_close_to_the_fractions():
    ids, pids = patients()
    subsets = make_split(ids, pids)
    assert set(subsets) == {"train", "val", "test"}
    per_patient = pd.DataFrame({"pid": pids, "s": subsets}).groupby("pid")["s"].nunique()
    assert (per_patient == 1).all()
    for name, fraction in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
        assert abs(np.mean(subsets == name) - fraction) < 0.04


def test_image_split_has_exact_sizes():
    ids = [str(i) for i in range(200)]
    subsets = make_split(ids, [""] * 200)  # auto -> image: pids unknown
    assert [int(np.sum(subsets == s)) for s in ("train", "val", "test")] == [140, 30, 30]


def test_deterministic_given_seed_and_blind_to_global_rngs():
    ids, pids = patients()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    first = make_split(ids, pids, seed=7)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    np.random.rand(10)
    np.testing.assert_array_equal(make_split(ids, pids, seed=7), first)
    assert not np.array_equal(make_split(ids, pids, seed=8), first)
    # The slice order does not matter, only the data.
    order = np.random.default_rng(1).permutation(len(ids))
    np.testing.assert_array_equal(make_split(ids[order], pids[order], seed=7), first[order])


def test_fold_is_the_test_set_and_the_rest_splits_by_patient():
    ids, pids = patients()
    fold_of_patient = {p: i % 5 + 1 for i, p in enumerate(dict.fromkeys(pids))}
    folds = np.array([fold_of_patient[p] for p in pids])
    subsets = make_split(ids, pids, fold=2, folds=folds)
    np.testing.assert_array_equal(subsets == "test", folds == 2)
    rest = subsets[folds != 2]
    assert abs(np.mean(rest == "val") - 0.15 / 0.85) < 0.05
    assert not set(pids[subsets == "train"]) & set(pids[subsets == "val"])


def test_errors_name_the_setting_and_the_fix():
    ids, pids = patients(10)
    with pytest.raises(ValueError, match=r"split=patient needs a patient id .*data\.split=image"):
        make_split(ids, np.where(pids == "P3", "", pids), mode="patient")
    with pytest.raises(
        ValueError, match=r"data\.fold=1 needs the cross-validation fold.*fold column"
    ):
        make_split(ids, pids, fold=1)
    with pytest.raises(ValueError, match=r"data\.fractions=\[0\.5, 0\.5, 0\.5\]"):
        make_split(ids, pids, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"split='random' is not one of"):
        make_split(ids, pids, mode="random")
    with pytest.raises(ValueError, match=r"only 2 patients/images for 3"):
        make_split(["a", "b"], ["p", "q"])


def test_write_split_csv(tmp_path):
    path = write_split_csv(
        tmp_path / "run" / "split.csv", ["1", "2"], ["p", "q"], ["train", "test"]
    )
    assert path.read_text().splitlines() == ["id,pid,subset", "1,p,train", "2,q,test"]
