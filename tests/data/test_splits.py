import logging
import random

import numpy as np
import pandas as pd
import pytest
import torch
from datafiles import write_folder, write_metadata

from brainseg.data import BrainTumorDataModule
from brainseg.data.folder import FolderSource
from brainseg.data.splits import make_split, resolve_mode, write_split_csv


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
    subsets = make_split(ids, [""] * 200, mode="image")
    assert [int(np.sum(subsets == s)) for s in ("train", "val", "test")] == [140, 30, 30]


def test_auto_without_any_pid_splits_by_image_and_says_so(caplog):
    ids = [str(i) for i in range(200)]
    with caplog.at_level(logging.WARNING):
        subsets = make_split(ids, [""] * 200)
    np.testing.assert_array_equal(subsets, make_split(ids, [""] * 200, mode="image"))
    warning = caplog.text
    assert "per slice" in warning and "different subsets" in warning
    assert "data.split=image" in warning


def test_auto_refuses_a_mix_of_known_and_unknown_pids():
    # One blank pid among 13 patients used to turn the whole split into a per-slice one.
    ids, pids = patients(13)
    pids = pids.copy()
    pids[[4, 9]] = ""
    with pytest.raises(ValueError) as info:
        make_split(ids, pids)
    message = str(info.value)
    assert "2 of" in message and "have no patient id (4, 9)" in message
    assert "data.split=image" in message
    with pytest.raises(ValueError, match=r"data/metadata\.csv"):
        resolve_mode("auto", ids, pids, pid_file="data/metadata.csv")


def test_errors_list_the_first_few_slices_without_pid_and_a_count():
    ids = [f"s{i}" for i in range(40)]
    pids = ["P1"] * 10 + [""] * 30
    with pytest.raises(ValueError, match=r"30 of 40 .*\(s10, s11, s12, s13, s14 and 25 more\)"):
        resolve_mode("patient", ids, pids)


def test_image_mode_accepts_partial_pids_and_patient_mode_keeps_patients_together(caplog):
    ids, pids = patients(13)
    partial = np.where(np.arange(len(pids)) % 2 == 0, pids, "")
    with caplog.at_level(logging.WARNING):
        assert resolve_mode("image", ids, partial) == "image"
    assert resolve_mode("auto", ids, pids) == resolve_mode("patient", ids, pids) == "patient"
    assert not caplog.records


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
    with pytest.raises(ValueError, match=r"split=patient needs a patient id .*none of the"):
        make_split(ids, [""] * len(ids), mode="patient")
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


def test_write_split_csv_records_the_resolved_mode(tmp_path):
    path = write_split_csv(
        tmp_path / "run" / "split.csv", ["1", "2"], ["p", "q"], ["train", "test"], "patient"
    )
    assert path.read_text().splitlines() == [
        "id,pid,subset,split",
        "1,p,train,patient",
        "2,q,test,patient",
    ]
    with pytest.raises(ValueError, match=r"split='auto'.*patient or image"):
        write_split_csv(tmp_path / "split.csv", ["1"], ["p"], ["train"], "auto")


def folder_datamodule(root, tmp_path, **kwargs) -> BrainTumorDataModule:
    return BrainTumorDataModule(
        FolderSource(root), image_size=16, cache_dir=tmp_path / "cache", num_workers=0, **kwargs
    )


def test_folder_with_partial_metadata_refuses_auto_and_names_the_file(tmp_path):
    root = write_folder(tmp_path / "d", n=26)  # 13 patients, 2 slices each
    write_metadata(root, [(str(i), f"P{(i - 1) // 2}") for i in range(1, 14)])
    dm = folder_datamodule(root, tmp_path)
    with pytest.raises(ValueError) as info:
        dm.setup()
    message = str(info.value)
    assert str(root / "metadata.csv") in message
    assert "13 of 26 slices have no patient id (14, 15, 16, 17, 18 and 8 more)" in message
    assert "data.split=image" in message


def test_folder_with_a_blank_pid_refuses_auto(tmp_path):
    root = write_folder(tmp_path / "d", n=26)
    rows = [(str(i), "" if i == 7 else f"P{(i - 1) // 2}") for i in range(1, 27)]
    write_metadata(root, rows)
    with pytest.raises(ValueError, match=r"1 of 26 slices have no patient id \(7\)"):
        folder_datamodule(root, tmp_path).setup()


def test_split_image_accepts_partial_metadata_and_records_image(tmp_path):
    root = write_folder(tmp_path / "d", n=26)
    write_metadata(root, [(str(i), f"P{(i - 1) // 2}") for i in range(1, 14)])
    dm = folder_datamodule(root, tmp_path, split="image")
    dm.setup()
    assert dm.split_mode == "image" and sum(dm.subset_sizes().values()) == 26
    written = pd.read_csv(dm.write_split(tmp_path / "run" / "split.csv"), dtype=str)
    assert (written["split"] == "image").all()


def test_split_mode_and_split_csv_record_patient(tmp_path):
    dm = folder_datamodule(write_folder(tmp_path / "d", n=20), tmp_path)
    assert dm.split_mode is None
    dm.setup()
    assert dm.split_mode == "patient"
    written = pd.read_csv(dm.write_split(tmp_path / "run" / "split.csv"), dtype=str)
    assert list(written.columns) == ["id", "pid", "subset", "split"]
    assert (written["split"] == "patient").all()
    assert (written.groupby("pid")["subset"].nunique() == 1).all()


def test_folder_without_metadata_splits_by_image_with_a_warning(tmp_path, caplog):
    dm = folder_datamodule(write_folder(tmp_path / "d", n=20, metadata=False), tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.split_mode == "image"
    assert "per slice" in caplog.text and str(tmp_path / "d" / "metadata.csv") in caplog.text
