"""Results per tumor type and tumor-size tertile, and the paired statistics within each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainseg.data.sources import LABEL_NAMES
from brainseg.report import build_report, per_image_means
from brainseg.report.collect import load_sweep
from brainseg.report.stats import paired_stats
from brainseg.report.strata import size_edges, strata_table

from .fake_sweep import make_sweep


def _means(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1), n_images=36, n_patients=9)
    return sweep, per_image_means(load_sweep(sweep))


def test_every_metric_per_type_and_size_equals_a_recomputation(tmp_path):
    _, means = _means(tmp_path)
    edges = size_edges(means)
    areas = means["unet"]["true_area"]
    assert edges == tuple(np.floor(np.quantile(areas, [1 / 3, 2 / 3])))
    strata = strata_table(means, edges).set_index(["subset", "metric", "variant"])["value"]
    for variant, frame in means.items():
        for label, group in frame.groupby("label"):
            subset = LABEL_NAMES[int(label)]
            assert strata[subset, "dice", variant] == pytest.approx(group["dice"].mean())
            detected = group["lesions_detected"].sum() / group["lesions"].sum()
            assert strata[subset, "lesion_recall", variant] == pytest.approx(detected)
            tp, pred = group["tp"].sum(), group["pred_area"].sum()
            assert strata[subset, "precision", variant] == pytest.approx(tp / pred)
        small = frame[frame["true_area"] <= edges[0]]
        name = next(s for s in strata.index.get_level_values(0) if s.startswith("small"))
        assert strata[name, "dice", variant] == pytest.approx(small["dice"].mean())
        pooled = 2 * small["tp"].sum() / (small["pred_area"] + small["true_area"]).sum()
        assert strata[name, "dice_pooled", variant] == pytest.approx(pooled)


def test_older_records_get_their_overlap_back_from_dice(tmp_path):
    # fake per_image.csv files have no tp column, as the archived runs: Dice gives it back.
    _, means = _means(tmp_path)
    frame = means["fpn"]
    exact = frame["dice"] * (frame["pred_area"] + frame["true_area"]) / 2
    assert np.abs(frame["tp"] - exact).max() <= 0.5


def test_paired_stats_within_each_size_tertile(tmp_path):
    sweep, means = _means(tmp_path)
    stats = paired_stats(means, n_resamples=200)
    sizes = stats[stats["stratum"] == "tumor size"]
    assert sizes["subset"].nunique() == 3
    assert set(sizes["metric"]) >= {"dice", "dice_pooled", "precision", "recall", "lesion_recall"}
    paired = means["unet"].merge(means["fpn"], on="id", suffixes=("_a", "_b"))
    low = size_edges(means)[0]
    small = paired[paired["true_area_a"] <= low]
    row = sizes[(sizes["metric"] == "dice") & sizes["subset"].str.startswith("small")].iloc[0]
    assert row["n_images"] == len(small)
    assert row["diff"] == pytest.approx((small["dice_b"] - small["dice_a"]).mean())
    build_report(sweep, wandb=False, qualitative=False, n_resamples=50)
    text = (sweep / "report" / "strata.md").read_text()
    assert "## tumor type: glioma" in text and "## tumor size: small (≤" in text
    assert pd.read_csv(sweep / "report" / "strata.csv")["stratum"].nunique() == 3
