"""Pixel-level ECE: torchmetrics' BinaryCalibrationError from sum states, and the reliability
figure the report draws from the runs' bins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryCalibrationError

from brainseg.metrics import PixelCalibration
from brainseg.report import build_report, load_sweep
from brainseg.report.figures import pooled_reliability

from .fake_sweep import make_sweep
from .test_metrics import _batches, merged_and_whole


@pytest.mark.parametrize("n_bins", [15, 4])
def test_ece_equals_torchmetrics_over_batches(n_bins):
    ours, reference = PixelCalibration(n_bins), BinaryCalibrationError(n_bins=n_bins, norm="l1")
    batches = _batches(seed=5, n_batches=3, batch=4)
    batches[0][0][0, 0, :2, :2] = 50.0  # probability 1.0 in float32: torchmetrics' extra bin
    for logits, target in batches:
        ours.update(logits, target)
        reference.update(torch.sigmoid(logits[:, 0]), target[:, 0].long())
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-5)
    bins = ours.bins()
    assert sum(bins["count"]) == sum(t.numel() for _, t in batches)
    assert sum(bins["positive_sum"]) == sum(t.sum().item() for _, t in batches)


def test_ece_states_merge_like_one_process():
    merged, expected = merged_and_whole(
        lambda: MetricCollection({"ece": PixelCalibration()}), _batches(seed=8, n_batches=4)
    )
    assert merged["ece"].item() == pytest.approx(expected["ece"].item())


def test_a_perfectly_calibrated_prediction_has_no_error():
    probs = torch.tensor([0.25] * 4 + [0.75] * 4)
    target = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0], dtype=torch.float32)
    logits = torch.log(probs / (1 - probs)).view(1, 1, 2, 4)
    metric = PixelCalibration(n_bins=4)
    metric.update(logits, target.view(1, 1, 2, 4))
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_report_draws_the_reliability_of_the_runs_that_recorded_it(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    assert "reliability.png" not in build_report(sweep, wandb=False, qualitative=False)
    for i, path in enumerate(sorted(sweep.glob("*/metrics.json"))):
        record = json.loads(path.read_text())
        record["reliability"] = {
            "lower_edge": [0.0, 0.5, 1.0],
            "count": [90.0, 10.0, 0.0],
            "confidence_sum": [9.0, 8.0, 0.0],
            "positive_sum": [9.0 - i, 8.0, 0.0],
        }
        path.write_text(json.dumps(record))
    written = build_report(sweep, wandb=False, qualitative=False)
    assert written["reliability.png"].stat().st_size > 0
    pooled = pooled_reliability(load_sweep(sweep).runs_of("unet"))  # jobs 0, 1
    assert pooled["count"].tolist() == [180.0, 20.0, 0.0]
    assert pooled["frequency"][0] == pytest.approx(17 / 180)  # 9 + 8 positives
    assert pooled["ece"] == pytest.approx(1 / 200)
    assert np.isnan(pooled["confidence"][2])  # an empty bin is not drawn
