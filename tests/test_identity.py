"""Results that can't be mixed up: runs are grouped by what they are, across sweeps, and paired
only on the same test set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainseg.identity import differing_keys, hash_test_set, run_settings, variant_key
from brainseg.report import MixedTestSets, build_report, load_sweep, load_sweeps
from brainseg.report.__main__ import main as report_main

from .fake_sweep import make_sweep

SIX = {"trainer.max_epochs": 6.0, "data.image_size": 128.0}
TWENTY_FOUR = {"trainer.max_epochs": 24.0, "data.image_size": 128.0}


def unet_dice(offset: float):
    return lambda model, seed, image, patient: 0.5 + offset + 0.01 * seed + 0.001 * image


def test_settings_leave_out_where_and_how_fast_a_run_ran():
    config = {
        "seed": 3,
        "model": {"name": "unet", "base_width": 16, "weights_path": "/somewhere/w.pth"},
        "data": {"image_size": 128, "root": "/data", "num_workers": 2, "fold": 1, "seed": 3},
        "trainer": {"max_epochs": 24, "enable_progress_bar": False, "devices": 1},
        "paths": {"output_dir": "/out"},
        "logger": {"wandb": {"project": "x"}},
    }
    assert run_settings(config) == {
        "data.image_size": 128.0,
        "model.base_width": 16.0,
        "model.name": "unet",
        "trainer.max_epochs": 24.0,
    }
    assert differing_keys([{"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 1}]) == ["b"]


def test_a_variant_key_is_shared_by_seeds_and_nothing_else():
    config = {"model": {"name": "unet", "base_width": 16}, "optimizer": {"lr": 1e-3}}
    key = variant_key(run_settings(config | {"seed": 0}))
    assert key.startswith("unet-")
    assert variant_key(run_settings(config | {"seed": 1, "data": {"fold": 2}})) == key
    assert variant_key(run_settings(config | {"optimizer": {"lr": 1e-4}})) != key
    assert variant_key(run_settings(config | {"logger": {"wandb": {}}})) == key  # how it ran


def test_the_hash_test_set_follows_ids_and_masks_not_their_order():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[1, 1, 1] = 1
    ids = np.array(["a", "b", "c"])
    same = hash_test_set(ids[::-1], masks[::-1])
    assert hash_test_set(ids, masks) == same
    other_masks = masks.copy()
    other_masks[2, 0, 0] = 1
    assert hash_test_set(ids, other_masks) != same  # same ids, other slices: synthetic "0".."63"
    assert hash_test_set(np.array(["a", "b", "d"]), masks) != same
    assert hash_test_set(ids[:0], masks[:0]) is None


def test_two_sweeps_differing_in_epochs_are_labelled_apart_never_pooled(tmp_path):
    a = make_sweep(tmp_path / "a", models=("unet",), settings=SIX, test_set="T", dice=unet_dice(0))
    b = make_sweep(
        tmp_path / "b", models=("unet",), settings=TWENTY_FOUR, test_set="T", dice=unet_dice(0.2)
    )
    sweep = load_sweeps([a, b], out=tmp_path / "cmp")
    assert sweep.variants == ["unet trainer.max_epochs=6", "unet trainer.max_epochs=24"]
    assert {len(sweep.runs_of(v)) for v in sweep.variants} == {2}

    written = build_report(sweep, wandb=False, qualitative=False, n_resamples=200)
    assert written["table.md"].parent == tmp_path / "cmp"
    table = pd.read_csv(written["table.csv"], index_col="metric")
    for variant, folder in zip(sweep.variants, (a, b), strict=True):
        dice = [json.loads(p.read_text())["test"]["dice"] for p in folder.glob("*/metrics.json")]
        assert table.loc["dice", f"{variant}_mean"] == pytest.approx(np.mean(dice))
    stats = pd.read_csv(written["stats.csv"])
    dice = stats[(stats.subset == "all") & (stats.metric == "dice")].iloc[0]
    assert dice["diff"] == pytest.approx(0.2, abs=1e-9)  # paired: same slices, same test set


def test_the_cli_compares_several_folders_into_a_folder_named_for_the_comparison(
    tmp_path, monkeypatch, capsys
):
    a = make_sweep(tmp_path / "six", models=("unet",), settings=SIX, test_set="T")
    b = make_sweep(tmp_path / "long", models=("unet",), settings=TWENTY_FOUR, test_set="T")
    monkeypatch.chdir(tmp_path)
    args = ["six", "long", "--label", "six=6ep", "--label", "long=24ep", "--no-qualitative"]
    assert report_main([*args, "--no-wandb", "--resamples", "100"]) == 0
    table = (tmp_path / "reports" / "six-vs-long" / "table.md").read_text()
    assert "| unet [6ep] (n=2) | unet [24ep] (n=2) |" in table
    assert not (a / "report").exists() and not (b / "report").exists()


def test_identical_runs_of_two_folders_pool_but_one_seed_twice_is_refused(tmp_path):
    a = make_sweep(tmp_path / "a", models=("unet",), seeds=(0, 1), settings=SIX, test_set="T")
    b = make_sweep(tmp_path / "b", models=("unet",), seeds=(2,), settings=SIX, test_set="T")
    sweep = load_sweeps([a, b], out=tmp_path / "cmp")
    assert sweep.variants == ["unet"] and len(sweep.runs_of("unet")) == 3  # seeds added later

    with pytest.raises(ValueError, match=r"seed=0 appears twice.*--label"):
        load_sweeps([a, a], out=tmp_path / "cmp")
    twice = load_sweeps([a, str(tmp_path / "a") + "/"], labels={str(a): "x"}, out=tmp_path / "c")
    assert sweep.variants != twice.variants and len(twice.variants) == 2


def test_variants_tested_on_different_test_sets_are_not_paired(tmp_path):
    a = make_sweep(tmp_path / "a", models=("unet",), settings=SIX, test_set="T1")
    b = make_sweep(tmp_path / "b", models=("unet",), settings=TWENTY_FOUR, test_set="T2")
    with pytest.raises(MixedTestSets, match=r"different test sets \(test_set T1-None vs T2-None"):
        build_report(load_sweeps([a, b], out=tmp_path / "x"), wandb=False, qualitative=False)

    mixed = load_sweeps([a, b], out=tmp_path / "mixed", allow_mixed=True)
    written = build_report(mixed, wandb=False, qualitative=False)
    assert pd.read_csv(written["stats.csv"]).empty
    assert "Not paired" in written["stats.md"].read_text()
    table = written["table.md"].read_text()
    assert "| unet trainer.max_epochs=6 | T1-None | 30 |" in table  # each variant's fingerprint


def test_older_records_without_settings_keep_their_sweep_naming(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path / "old"))
    assert sweep.variants == ["unet", "fpn"]


def test_a_run_records_its_settings_and_protocol(smoke_cfg):
    from brainseg.train import train

    record = train(smoke_cfg("trainer.max_epochs=1", "model=unet", "test=true"))
    assert record["settings"]["model.name"] == "unet"
    assert record["settings"]["trainer.max_epochs"] == 1.0
    assert not any(k.startswith(("paths.", "logger.")) for k in record["settings"])
    protocol = record["protocol"]
    split = pd.read_csv(f"{smoke_cfg().paths.output_dir}/split.csv", dtype={"id": str})
    assert protocol["test_slices"] == int((split.subset == "test").sum()) > 0
    assert protocol["image_size"] == 64 and protocol["max_epochs"] == 1
    assert len(protocol["test_set"]) == 16 and len(protocol["data"]) == 16
