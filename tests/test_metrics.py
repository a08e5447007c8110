import math
import re

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.classification import BinaryF1Score
from torchmetrics.utilities.data import dim_zero_sum

from brainseg.metrics import (
    FalsePositiveLesionsPerEmpty,
    LesionRecall,
    PerImageDice,
    PooledDice,
    PooledPrecision,
    PooledRecall,
    build_empty_slice_metrics,
    build_metrics,
    label_components,
    lesion_counts,
    logits_to_masks,
    per_image_stats,
    probabilities,
    registry,
    to_masks,
)

KEYS = {"dice", "dice_pooled", "precision", "recall", "lesion_recall", "ece"}


def _blobs(rng: np.random.Generator, batch: int, size: int = 32, max_blobs: int = 5) -> np.ndarray:
    """Bool (B, H, W) masks with 0..max_blobs discs and squares, some touching or empty."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((batch, size, size), dtype=bool)
    for b in range(batch):
        for _ in range(rng.integers(0, max_blobs + 1)):
            cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(1, 6)
            if rng.random() < 0.5:
                masks[b] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            else:
                masks[b, cy : cy + r, cx : cx + r] = True
    return masks


def _batches(seed: int = 0, n_batches: int = 4, batch: int = 6, size: int = 32):
    """(logits (B,1,H,W), target (B,1,H,W) float) pairs: noisy, shifted versions of the truth."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        truth = _blobs(rng, batch, size)
        pred = np.roll(truth, rng.integers(-3, 4), axis=2) ^ (rng.random(truth.shape) < 0.02)
        pred &= rng.random(truth.shape) > 0.2  # drop pixels so some lesions are partly missed
        logits = np.where(pred, 1.0, -1.0) * rng.uniform(0.1, 5.0, truth.shape)
        out.append(
            (
                torch.from_numpy(logits).float().unsqueeze(1),
                torch.from_numpy(truth).float().unsqueeze(1),
            )
        )
    return out


def _np_masks(logits, target, threshold=0.5):
    prob = 1 / (1 + np.exp(-logits[:, 0].double().numpy()))
    return prob > threshold, target[:, 0].numpy() > 0


def _np_per_image(pred, truth):
    """Reference per-image scores by a plain loop, with the documented empty-mask rule."""
    rows = []
    for p, t in zip(pred, truth, strict=True):
        tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
        both_empty = not p.any() and not t.any()

        def ratio(num, den, both_empty=both_empty):
            return num / den if den else float(both_empty)

        rows.append((ratio(2 * tp, 2 * tp + fp + fn), ratio(tp, tp + fp), ratio(tp, tp + fn)))
    return np.array(rows)


def _np_lesions(pred, truth, connectivity=8, min_overlap=0.0):
    """Reference lesion counts: scipy labels and an explicit loop over components."""
    structure = np.ones((3, 3)) if connectivity == 8 else None  # None = cross in scipy
    lesions, detected = [], []
    for p, t in zip(pred, truth, strict=True):
        labels, n = ndimage.label(t, structure=structure)
        hits = 0
        for k in range(1, n + 1):
            component = labels == k
            hits += (p & component).sum() / component.sum() > min_overlap
        lesions.append(n)
        detected.append(hits)
    return np.array(lesions), np.array(detected)


# ---------------------------------------------------------------- per-image scores


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_per_image_stats_match_numpy(threshold):
    logits, target = _batches(seed=1, n_batches=1, batch=12)[0]
    stats = per_image_stats(logits, target, threshold=threshold)
    pred, truth = _np_masks(logits, target, threshold)
    ref = _np_per_image(pred, truth)
    for i, key in enumerate(("dice", "precision", "recall")):
        np.testing.assert_allclose(stats[key].numpy(), ref[:, i], rtol=1e-6)
    np.testing.assert_array_equal(stats["pred_area"].numpy(), pred.sum((1, 2)))
    np.testing.assert_array_equal(stats["true_area"].numpy(), truth.sum((1, 2)))
    lesions, detected = _np_lesions(pred, truth)
    np.testing.assert_array_equal(stats["lesions"].numpy(), lesions)
    np.testing.assert_array_equal(stats["lesions_detected"].numpy(), detected)


def test_empty_mask_convention():
    on, off = torch.full((1, 1, 4, 4), 5.0), torch.full((1, 1, 4, 4), -5.0)
    full, empty = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    logits = torch.cat([off, on, off])
    target = torch.cat([empty, empty, full])
    # both empty; prediction only; truth only
    stats = per_image_stats(logits, target)
    assert stats["dice"].tolist() == [1.0, 0.0, 0.0]
    assert stats["precision"].tolist() == [1.0, 0.0, 0.0]
    assert stats["recall"].tolist() == [1.0, 0.0, 0.0]
    metric = PerImageDice()
    metric.update(logits, target)
    assert metric.compute().item() == pytest.approx(1 / 3)
    # no lesion in anything seen: 1 when nothing is predicted either, else 0 (never NaN)
    for n_images, expected in [(1, 1.0), (2, 0.0)]:
        lesion_recall = LesionRecall()
        lesion_recall.update(logits[:n_images], target[:n_images])
        assert lesion_recall.compute().item() == expected


def test_per_image_dice_is_mean_over_images_across_batches():
    batches = _batches(seed=2)
    metric = PerImageDice()
    for logits, target in batches:
        metric.update(logits, target)
    pred, truth = _np_masks(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert metric.compute().item() == pytest.approx(_np_per_image(pred, truth)[:, 0].mean())


# ---------------------------------------------------------------- pooled scores


def test_pooled_scores_match_numpy_over_batches():
    batches = _batches(seed=3)
    metrics = build_metrics()
    for logits, target in batches:
        metrics.update(logits, target)
    result = metrics.compute()
    assert set(result) == KEYS
    pred, truth = _np_masks(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    assert result["dice_pooled"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert result["precision"].item() == pytest.approx(tp / (tp + fp))
    assert result["recall"].item() == pytest.approx(tp / (tp + fn))
    assert result["dice"].item() == pytest.approx(_np_per_image(pred, truth)[:, 0].mean())
    lesions, detected = _np_lesions(pred, truth)
    assert result["lesion_recall"].item() == pytest.approx(detected.sum() / lesions.sum())


def test_pooled_dice_equals_torchmetrics_f1_on_flat_pixels():
    logits, target = _batches(seed=4, n_batches=1)[0]
    ours = PooledDice()
    ours.update(logits, target)
    f1 = BinaryF1Score()
    f1.update(torch.sigmoid(logits).flatten(), target.flatten().long())
    assert ours.compute().item() == pytest.approx(f1.compute().item())


def test_pooled_metrics_do_not_mistake_small_logits_for_probabilities():
    # logits in [0, 1] are all positive predictions (sigmoid > 0.5); torchmetrics' float path
    # would read them as probabilities and call 0.3 negative
    logits = torch.full((1, 1, 2, 2), 0.3)
    target = torch.ones(1, 1, 2, 2)
    for metric in (PooledDice(), PooledPrecision(), PooledRecall()):
        metric.update(logits, target)
        assert metric.compute().item() == 1.0


# ---------------------------------------------------------------- lesion recall


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("method", ["scipy", "torch"])
def test_lesion_recall_matches_reference_over_batches(connectivity, method):
    batches = _batches(seed=5, n_batches=5)
    metric = LesionRecall(connectivity=connectivity, method=method)
    for logits, target in batches:
        metric.update(logits, target)
    logits, target = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    lesions, detected = _np_lesions(*_np_masks(logits, target), connectivity=connectivity)
    assert lesions.sum() > 50 and 0 < detected.sum() < lesions.sum()  # a meaningful case
    assert metric.total.item() == lesions.sum()
    assert metric.detected.item() == detected.sum()
    one_batch = LesionRecall(connectivity=connectivity, method=method)
    one_batch.update(logits, target)
    assert one_batch.compute().item() == metric.compute().item()
    assert metric.compute().item() == pytest.approx(detected.sum() / lesions.sum())


def test_min_overlap_rule():
    target = torch.zeros(1, 1, 4, 8)
    target[0, 0, :, :5] = 1  # one lesion of 20 pixels
    logits = torch.full((1, 1, 4, 8), -3.0)
    logits[0, 0, :, 0] = 3.0  # 4 of 20 pixels covered: overlap 0.2
    logits[0, 0, :, 7] = 3.0  # predicted pixels off the lesion do not count
    for min_overlap, expected in [(0.0, 1), (0.1, 1), (0.2, 0), (0.5, 0)]:
        _, detected = lesion_counts(logits, target, min_overlap=min_overlap)
        assert detected.item() == expected, min_overlap


def test_diagonal_lesions_join_with_8_connectivity_only():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 1, 1] = target[0, 0, 2, 2] = 1  # diagonal neighbours
    target[0, 0, 4, 4] = 1
    logits = torch.full((1, 1, 5, 5), -1.0)
    logits[0, 0, 4, 4] = 1.0  # only the isolated pixel is found
    for connectivity, lesions, recall in [(8, 2, 1 / 2), (4, 3, 1 / 3)]:
        metric = LesionRecall(connectivity=connectivity)
        metric.update(logits, target)
        assert metric.total.item() == lesions
        assert metric.compute().item() == pytest.approx(recall)


# ---------------------------------------------------------------- exactness across processes


def merged_and_whole(build, batches) -> tuple[dict, dict]:
    """compute() of metrics whose batches were split between two "processes" and merged, and
    of the same metrics fed every batch."""
    whole, rank0, rank1 = build(), build(), build()
    for i, (logits, target) in enumerate(batches):
        whole.update(logits, target)
        (rank0 if i % 2 == 0 else rank1).update(logits, target)
    for name, metric in rank0.items():
        metric.merge_state(rank1[name])
    return {name: metric.compute() for name, metric in rank0.items()}, whole.compute()


def test_merging_states_equals_one_process():
    merged, expected = merged_and_whole(build_metrics, _batches(seed=6, n_batches=4))
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(merged[name], value), name


def test_states_are_sums_and_directions_are_the_declared_ones():
    for name, metric in [*build_metrics().items(), *build_empty_slice_metrics().items()]:
        assert metric.full_state_update is False
        assert metric.higher_is_better is registry.get(name).higher_is_better, name
        assert all(fn is dim_zero_sum for fn in metric._reductions.values())
    assert registry.get("fp_lesions_per_empty").higher_is_better is False


# ---------------------------------------------------------------- connected components


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.55, 1.0])
def test_torch_components_equal_scipy(connectivity, density):
    gen = torch.Generator().manual_seed(int(density * 100) + connectivity)
    mask = torch.rand(3, 23, 37, generator=gen) < density  # odd, non-square size
    labels_scipy, num_scipy = label_components(mask, connectivity, method="scipy")
    labels_torch, num_torch = label_components(mask, connectivity, method="torch")
    assert torch.equal(labels_torch, labels_scipy)
    assert torch.equal(num_torch, num_scipy)
    structure = np.ones((3, 3)) if connectivity == 8 else None
    for image, labels, num in zip(mask.numpy(), labels_scipy.numpy(), num_scipy, strict=True):
        ref_labels, ref_num = ndimage.label(image, structure=structure)
        np.testing.assert_array_equal(labels, ref_labels)
        assert num == ref_num


def test_torch_components_on_long_snake():
    # a one-pixel-wide serpentine: the worst case for label propagation
    mask = torch.zeros(1, 15, 15, dtype=torch.bool)
    mask[0, ::2, :] = True
    mask[0, 1::4, -1] = True
    mask[0, 3::4, 0] = True
    labels, num = label_components(mask, 4, method="torch")
    assert num.item() == 1
    assert torch.equal(labels, label_components(mask, 4, method="scipy")[0])


# ---------------------------------------------------------------- inputs and arguments


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.8])
def test_logit_space_threshold_equals_sigmoid_then_threshold(threshold):
    logits = 3 * torch.randn(64, 64, generator=torch.Generator().manual_seed(9))
    logits[0, :3] = torch.tensor([-30.0, 0.0, 30.0])  # saturated and exactly-0.5 pixels
    probs = probabilities(logits)
    masks = logits_to_masks(logits, threshold)
    assert probs.dtype == torch.float32 and masks.dtype == torch.bool
    # Float rounding may split pixels within a hair of the threshold; none else may differ.
    boundary = math.log(threshold / (1 - threshold))
    clear = (logits - boundary).abs() > 1e-5
    assert 0 < masks.sum() < masks.numel()
    assert torch.equal(to_masks(probs, threshold)[clear], masks[clear])


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.2])
def test_thresholding_rejects_threshold_outside_0_1(threshold):
    for apply, values in [(to_masks, torch.rand(4)), (logits_to_masks, torch.randn(4))]:
        with pytest.raises(ValueError, match=re.escape(str(threshold))):
            apply(values, threshold)


def test_bf16_logits_and_channelless_target():
    logits, target = _batches(seed=7, n_batches=1)[0]
    a, b = build_metrics(), build_metrics()
    a.update(logits, target)
    b.update(logits.bfloat16(), target[:, 0].bool())
    for name, value in a.compute().items():
        assert torch.allclose(b.compute()[name], value, atol=0.02), name


def test_clone_prefix():
    logits, target = _batches(seed=8, n_batches=1)[0]
    val = build_metrics().clone(prefix="val/")
    val.update(logits, target)
    assert set(val.compute()) == {f"val/{k}" for k in KEYS}


@pytest.mark.parametrize(
    ("build", "bad"),
    [
        (lambda: PerImageDice(threshold=1.0), "1.0"),
        (lambda: PooledDice(threshold=0.0), "0.0"),
        (lambda: LesionRecall(connectivity=6), "6"),
        (lambda: LesionRecall(min_overlap=1.0), "1.0"),
        (lambda: LesionRecall(min_overlap=-0.1), "-0.1"),
        (lambda: LesionRecall(method="cupy"), "cupy"),
        (lambda: FalsePositiveLesionsPerEmpty(connectivity=6), "6"),
        (lambda: FalsePositiveLesionsPerEmpty(method="cupy"), "cupy"),
    ],
)
def test_bad_arguments_raise_with_value(build, bad):
    with pytest.raises(ValueError, match=bad):
        build()


@pytest.mark.parametrize(
    ("logits_shape", "target_shape"),
    [((2, 1, 8, 8), (2, 1, 8, 4)), ((2, 2, 8, 8), (2, 2, 8, 8)), ((2, 8, 8), (2, 8, 8))],
)
def test_bad_shapes_raise_with_shapes(logits_shape, target_shape):
    for metric in [*build_metrics().values(), *build_empty_slice_metrics().values()]:
        with pytest.raises(ValueError) as err:
            metric.update(torch.zeros(logits_shape), torch.zeros(target_shape))
        assert str(logits_shape) in str(err.value)
