"""Tumor-free slices: one empty-mask convention for per-image rows, pooled metrics and the
module's logs, and the metrics that separate tumor slices from empty ones."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryF1Score, BinaryPrecision, BinaryRecall

from brainseg.metrics import (
    LesionRecall,
    PerImageDice,
    build_empty_slice_metrics,
    build_metrics,
    per_image_stats,
)
from brainseg.module import SegmentationModule

from .test_metrics import _batches, _np_lesions, _np_masks, merged_and_whole

EMPTY_KEYS = {"dice_tumor", "empty_correct", "fp_lesions_per_empty"}
POOLED = ("dice_pooled", "precision", "recall")


def _logits(pred: torch.Tensor) -> torch.Tensor:
    """Logits (B, 1, H, W) of a bool prediction (B, H, W)."""
    return torch.where(pred, 4.0, -4.0).unsqueeze(1)


def _mosaic(images: torch.Tensor, background: float) -> torch.Tensor:
    """All images of (B, 1, H, W) side by side as one (1, 1, H, B*(W+1)) image, a background
    column between neighbours so that no component spans two images."""
    padded = torch.nn.functional.pad(images, (0, 1), value=background)
    return torch.cat(list(padded), dim=-1).unsqueeze(0)


def _compute(logits, target) -> dict[str, float]:
    metrics = build_metrics()
    metrics.update(logits, target)
    return {key: value.item() for key, value in metrics.compute().items()}


# ------------------------------------------------- one convention: per image, pooled, lesions


@pytest.mark.parametrize("false_positive", [False, True])
def test_tumor_free_set_pooled_metrics_agree_with_per_image_rows(false_positive):
    # Observed: on a test set without tumor, per_image.csv said precision = recall = 1 while
    # the pooled metrics said 0 for the same slices.
    pred = torch.zeros(4, 8, 8, dtype=torch.bool)
    if false_positive:
        pred[2, 1:3, 1:3] = True
    logits, target = _logits(pred), torch.zeros(4, 1, 8, 8)
    rows = per_image_stats(logits, target)
    result = _compute(logits, target)
    expected = 0.0 if false_positive else 1.0  # nothing claimed on any slice: all 1
    for key in ("dice", "precision", "recall"):
        assert rows[key].tolist() == [1.0, 1.0, 1 - false_positive, 1.0], key
    for key in (*POOLED, "lesion_recall"):
        assert result[key] == expected, key
    assert result["dice"] == pytest.approx(rows["dice"].mean().item())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_scores_are_the_per_image_rule_applied_to_all_pixels_at_once(seed):
    # The pooled scores of a set equal the per-image scores of one image holding all its slices:
    # one convention, whether the set has tumors, none, or nothing predicted.
    logits, target = _batches(seed=seed, n_batches=1, batch=6)[0]
    cases = {
        "mixed": (logits, target),
        "no tumor": (logits, torch.zeros_like(target)),
        "nothing predicted": (torch.full_like(logits, -4.0), target),
        "both empty": (torch.full_like(logits, -4.0), torch.zeros_like(target)),
    }
    for name, (case_logits, case_target) in cases.items():
        result = _compute(case_logits, case_target)
        whole = per_image_stats(_mosaic(case_logits, -4.0), _mosaic(case_target, 0.0))
        assert result["dice_pooled"] == pytest.approx(whole["dice"].item()), name
        assert result["precision"] == pytest.approx(whole["precision"].item()), name
        assert result["recall"] == pytest.approx(whole["recall"].item()), name
        lesions, detected = whole["lesions"].item(), whole["lesions_detected"].item()
        nothing_at_all = lesions == 0 and whole["pred_area"].item() == 0
        reference = detected / lesions if lesions else float(nothing_at_all)
        assert result["lesion_recall"] == pytest.approx(reference), name


def _tumor_on_every_slice(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for logits, target in _batches(seed=seed, n_batches=3, batch=6):
        target[:, :, 10:14, 10:14] = 1.0  # figshare: a tumor on every slice
        batches.append((logits, target))
    return batches


@pytest.mark.parametrize("nothing_predicted", [False, True])
def test_with_a_tumor_on_every_slice_nothing_changes(nothing_predicted):
    # The old metrics were torchmetrics' binary scores (0 for a zero denominator) and a lesion
    # recall that was detected / lesions; figshare's numbers must stay bit for bit.
    batches = _tumor_on_every_slice(seed=11)
    if nothing_predicted:  # precision's only zero denominator under a tumor on every slice
        batches = [(torch.full_like(logits, -4.0), target) for logits, target in batches]
    new = build_metrics()
    old = {
        "dice_pooled": BinaryF1Score(validate_args=False),
        "precision": BinaryPrecision(validate_args=False),
        "recall": BinaryRecall(validate_args=False),
    }
    detected = total = 0
    for logits, target in batches:
        new.update(logits, target)
        for metric in old.values():
            metric.update((logits > 0).long(), target.long())
        lesions, hits = _np_lesions(*_np_masks(logits, target))
        detected, total = detected + hits.sum(), total + lesions.sum()
    result = new.compute()
    for key, metric in old.items():
        assert torch.equal(result[key], metric.compute()), key
    old_lesion_recall = torch.tensor(detected) / torch.tensor(total)
    assert torch.equal(result["lesion_recall"], old_lesion_recall)
    if nothing_predicted:
        assert result["precision"].item() == 0.0 and result["recall"].item() == 0.0


# ------------------------------------------------- dice_tumor, empty_correct, fp_lesions_per_empty


def _np_empty_slice_metrics(pred: np.ndarray, truth: np.ndarray, connectivity: int):
    """Reference by a plain loop with scipy's labelling."""
    structure = np.ones((3, 3)) if connectivity == 8 else None
    tumor_dice, correct, fp_lesions, n_empty = [], 0, 0, 0
    for p, t in zip(pred, truth, strict=True):
        if t.any():
            tumor_dice.append(2 * (p & t).sum() / (p.sum() + t.sum()))
        else:
            n_empty += 1
            correct += not p.any()
            fp_lesions += ndimage.label(p, structure=structure)[1]
    return np.mean(tumor_dice), correct / n_empty, fp_lesions / n_empty


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("method", ["scipy", "torch"])
def test_empty_slice_metrics_match_a_scipy_reference(connectivity, method):
    batches = _batches(seed=12, n_batches=4, batch=8)
    for logits, target in batches:
        target[::3] = 0.0  # a third of the slices without tumor
        logits[::6] = -4.0  # half of those predicted empty, the others with noise lesions
    metrics = build_empty_slice_metrics(connectivity=connectivity, method=method)
    for logits, target in batches:
        metrics.update(logits, target)
    result = metrics.compute()
    pred, truth = _np_masks(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    dice_tumor, empty_correct, fp_rate = _np_empty_slice_metrics(pred, truth, connectivity)
    assert 0 < empty_correct < 1 and fp_rate > 0  # a meaningful case
    assert result["dice_tumor"].item() == pytest.approx(dice_tumor)
    assert result["empty_correct"].item() == pytest.approx(empty_correct)
    assert result["fp_lesions_per_empty"].item() == pytest.approx(fp_rate)


def test_headline_dice_mixes_what_dice_tumor_separates():
    # 2 tumor slices (Dice 0.25 each) and 6 empty slices predicted empty (Dice 1 each).
    pred = torch.zeros(8, 8, 8, dtype=torch.bool)
    truth = torch.zeros(8, 1, 8, 8)
    truth[:2, 0, :4, :4] = 1.0
    pred[:2, :1, :2] = True  # 2 of 16 tumor pixels: Dice 2*2 / (2 + 16)
    metrics = build_empty_slice_metrics()
    metrics.update(_logits(pred), truth)
    result = metrics.compute()
    headline = PerImageDice()
    headline.update(_logits(pred), truth)
    assert headline.compute().item() == pytest.approx((2 * 4 / 18 + 6) / 8)
    assert result["dice_tumor"].item() == pytest.approx(4 / 18)
    assert result["empty_correct"].item() == 1.0
    assert result["fp_lesions_per_empty"].item() == 0.0


def test_empty_slice_metrics_are_nan_without_their_slices():
    logits, target = _tumor_on_every_slice(seed=13)[0]
    metrics = build_empty_slice_metrics()
    metrics.update(logits, target)
    result = metrics.compute()
    dice = PerImageDice()
    dice.update(logits, target)
    assert torch.equal(result["dice_tumor"], dice.compute())  # every slice has a tumor
    assert result["empty_correct"].isnan() and result["fp_lesions_per_empty"].isnan()
    no_tumor = build_empty_slice_metrics()
    no_tumor.update(logits, torch.zeros_like(target))
    assert no_tumor.compute()["dice_tumor"].isnan()


def test_merging_empty_slice_states_equals_one_process():
    batches = _batches(seed=14, n_batches=4)
    for _, target in batches:
        target[1::2] = 0.0
    merged, expected = merged_and_whole(build_empty_slice_metrics, batches)
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(merged[name], value), name


def test_lesion_recall_without_lesions_counts_any_prediction_as_a_miss():
    target = torch.zeros(2, 1, 6, 6)
    metric = LesionRecall()
    metric.update(torch.full((2, 1, 6, 6), -4.0), target)
    assert metric.compute().item() == 1.0
    logits = torch.full((2, 1, 6, 6), -4.0)
    logits[1, 0, 3, 3] = 4.0
    metric.update(logits, target)
    assert metric.compute().item() == 0.0


# ------------------------------------------------- what the module logs


class Threshold(nn.Module):
    """A fixed "network": predicts the pixels whose image value is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * (images - 0.5)


def _samples(truth: torch.Tensor, pred: torch.Tensor) -> list[dict]:
    return [
        {"image": p.float()[None], "mask": t.float()[None], "id": str(i), "pid": "P", "label": 1}
        for i, (t, p) in enumerate(zip(truth, pred, strict=True))
    ]


def _evaluate(truth: torch.Tensor, pred: torch.Tensor, stage: str = "test"):
    module = SegmentationModule(
        net=Threshold(),
        loss=nn.BCEWithLogitsLoss(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        timing={"warmup": 1, "iters": 1},
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(_samples(truth, pred), batch_size=3)
    (trainer.test if stage == "test" else trainer.validate)(module, dataloaders=loader)
    logged = {
        key.removeprefix(f"{stage}/"): value.item()
        for key, value in trainer.callback_metrics.items()
        if key.startswith(f"{stage}/")
    }
    return logged, module.test_rows


def _masks(n: int, tumor: list[bool], size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    truth = torch.zeros(n, size, size, dtype=torch.bool)
    for i, has_tumor in enumerate(tumor):
        truth[i, 2:5, 2:5] = has_tumor
    pred = truth.clone()
    pred[0, 3:5, 3:6] = True  # an imperfect first prediction
    return truth, pred


def test_module_logs_the_empty_slice_metrics_only_when_a_slice_is_tumor_free(caplog):
    truth, pred = _masks(5, [True, True, True, True, True])
    logged, _ = _evaluate(truth, pred)
    assert logged.keys() >= {"dice", *POOLED, "lesion_recall"}
    assert not EMPTY_KEYS & logged.keys()  # figshare's metrics.json keeps its keys

    truth, pred = _masks(5, [True, True, False, False, False])
    pred[4, 0, 0] = pred[4, 7, 7] = True  # two false-positive lesions on an empty slice
    for stage in ("test", "val"):
        logged, _ = _evaluate(truth, pred, stage)
        assert logged.keys() >= EMPTY_KEYS, stage
        assert logged["empty_correct"] == pytest.approx(2 / 3)
        assert logged["fp_lesions_per_empty"] == pytest.approx(2 / 3)
        rows = per_image_stats(_logits(pred), truth[:, None].float())
        assert logged["dice_tumor"] == pytest.approx(rows["dice"][:2].mean().item())
        assert logged["dice"] == pytest.approx(rows["dice"].mean().item())
    assert "no tumor" not in caplog.text


def test_module_on_a_tumor_free_set_warns_and_its_rows_agree_with_the_logs(caplog):
    truth, pred = _masks(4, [False] * 4)
    pred[0] = False  # nothing predicted anywhere
    with caplog.at_level(logging.WARNING, logger="brainseg.module"):
        logged, rows = _evaluate(truth, pred)
    assert caplog.text.count("no tumor on any slice") == 1
    assert "dice_tumor" not in logged
    assert logged["empty_correct"] == 1.0 and logged["fp_lesions_per_empty"] == 0.0
    for key in ("dice", "precision", "recall"):
        assert [row[key] for row in rows] == [1.0] * 4, key
    for key in ("dice", *POOLED, "lesion_recall"):
        assert logged[key] == 1.0, key


def test_a_tumor_free_validation_set_warns_once_not_every_epoch(caplog):
    truth, pred = _masks(4, [False] * 4)
    module = SegmentationModule(
        net=Threshold(),
        loss=nn.BCEWithLogitsLoss(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = DataLoader(_samples(truth, pred), batch_size=3)
    with caplog.at_level(logging.WARNING, logger="brainseg.module"):
        for _ in range(3):  # three validation epochs
            trainer.validate(module, dataloaders=loader)
    assert caplog.text.count("no tumor on any slice") == 1
