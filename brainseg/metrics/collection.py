"""Segmentation metrics for binary masks, as torchmetrics ``Metric``s that accumulate on the device.

Inputs. Every ``update(logits, target)`` takes the network's raw LOGITS (B, 1, H, W) and a target
(B, 1, H, W) or (B, H, W) holding {0, 1}. A pixel is predicted positive when
``sigmoid(logit) > threshold``, computed as ``logit > log(threshold / (1 - threshold))``.

Empty masks (slices without tumour), one convention everywhere: a ratio whose denominator is 0
is 1 when prediction and truth are both empty (nothing to find, nothing claimed) and 0
otherwise. It holds per image (Dice, precision, recall of ``per_image_stats``, hence the rows of
per_image.csv), for the pooled scores over everything seen, and for lesion recall; so no NaN
ever enters a mean. With a tumour on every slice no denominator is 0 except precision's when
nothing is predicted at all, which is 0 under this rule as under torchmetrics' default.

What each key of ``build_metrics`` means:

- ``dice``: mean over images of per-image Dice 2TP / (2TP + FP + FN) — the headline Dice.
- ``dice_pooled``: Dice over all pixels of all images seen (TP, FP, FN summed first); equal to the
  binary F1 score on pixels.
- ``precision``, ``recall``: pooled over all pixels of all images seen, TP / (TP + FP) and
  TP / (TP + FN).
- ``lesion_recall``: share of ground-truth lesions (connected components, 8-connectivity by
  default) that the prediction detects, counted over all images seen.

On a set with tumour-free slices the headline Dice mostly measures "predicted nothing on an
empty slice". ``build_empty_slice_metrics`` separates the two kinds of slice:

- ``dice_tumor``: mean per-image Dice over the slices that contain a tumour only.
- ``empty_correct``: share of tumour-free slices predicted empty.
- ``fp_lesions_per_empty``: false-positive lesions (connected components of the prediction, same
  connectivity) per tumour-free slice.

Their ``compute`` is NaN when the set has no slice of the kind they average over; the Lightning
module logs them only when some slice is tumour-free (and ``dice_tumor`` only when some slice
has a tumour), so a set with a tumour on every slice reports exactly the five keys above.

States are sums (``dist_reduce_fx="sum"``), so every metric is exact across batches and DDP
processes. ``update`` never copies to the host on the pooled and per-image metrics; lesion
counts label components on the GPU (``label_components(method="torch")``) and synchronise only
to test convergence every few propagation steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryPrecision, BinaryRecall

_METHODS = ("auto", "scipy", "torch")


def _logit(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"threshold must be in (0, 1), got {threshold}; it applies to sigmoid(logit)"
        )
    return math.log(threshold / (1.0 - threshold))


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def _check_min_overlap(min_overlap: float) -> None:
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(
            f"min_overlap must be in [0, 1), got {min_overlap}; a lesion counts as detected when "
            "more than this fraction of its pixels is predicted (0 = any pixel)"
        )


def _binarize(logits: Tensor, target: Tensor, logit_threshold: float) -> tuple[Tensor, Tensor]:
    """Return (pred, truth) as bool (B, H, W) after checking shapes."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(
            f"logits must have shape (B, 1, H, W), got {tuple(logits.shape)}; "
            "metrics take the network's one-channel logits"
        )
    if target.shape == logits.shape:
        target = target[:, 0]
    elif target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}; pass a target of shape {tuple(logits.shape)} or (B, H, W)"
        )
    return logits[:, 0] > logit_threshold, target != 0


def _safe_ratio(num: Tensor, den: Tensor, both_empty: Tensor) -> Tensor:
    """num / den, and where den == 0: 1 if prediction and truth are both empty, else 0."""
    return torch.where(den > 0, num / den.clamp_min(1), both_empty.float())


def _per_image_scores(pred: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Per-image Dice, precision, recall and areas of bool (B, H, W) masks."""
    tp = (pred & truth).flatten(1).sum(1)
    pred_area = pred.flatten(1).sum(1)
    true_area = truth.flatten(1).sum(1)
    both_empty = (pred_area == 0) & (true_area == 0)
    return {
        "dice": _safe_ratio(2 * tp, pred_area + true_area, both_empty),
        "precision": _safe_ratio(tp, pred_area, both_empty),
        "recall": _safe_ratio(tp, true_area, both_empty),
        "pred_area": pred_area,
        "true_area": true_area,
    }


# ---------------------------------------------------------------------------------------------
# Connected components
# ---------------------------------------------------------------------------------------------


def _label_scipy(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    # One ndimage.label call for the whole batch: a 3-D structure whose batch axis has no
    # neighbours keeps images apart, and labels come out in raster order, image after image.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, _ = ndimage.label(mask.detach().cpu().numpy(), structure=structure)
    labels = torch.from_numpy(labels.astype(np.int64)).to(mask.device)  # (B, H, W)
    last = labels.flatten(1).amax(1)  # highest global label in each image (0 if empty)
    offset = torch.cat([last.new_zeros(1), last.cummax(0).values[:-1]])
    local = torch.where(labels > 0, labels - offset.view(-1, 1, 1), 0)
    return local, (last - offset).clamp_min(0)


def _neighbour_max(values: Tensor, connectivity: int) -> Tensor:
    if connectivity == 8:
        return F.max_pool2d(values, 3, stride=1, padding=1)
    vertical = F.max_pool2d(values, (3, 1), stride=1, padding=(1, 0))
    horizontal = F.max_pool2d(values, (1, 3), stride=1, padding=(0, 1))
    return torch.maximum(vertical, horizontal)


def _label_torch(mask: Tensor, connectivity: int, check_every: int = 4) -> tuple[Tensor, Tensor]:
    batch, height, width = mask.shape
    n = height * width
    # max_pool2d needs floating point; float32 holds pixel indices exactly below 2**24.
    dtype = torch.float32 if n < 2**24 else torch.float64
    fg = mask.unsqueeze(1).to(dtype)  # (B, 1, H, W)
    index = torch.arange(n, device=mask.device).view(1, 1, height, width)
    # Each foreground pixel starts with n - (its raster index): propagating the maximum spreads
    # the smallest raster index of the component, which makes the final ids match scipy's order.
    values = (n - index).to(dtype) * fg
    previous = values
    for step in range(1, n + 1):
        values = _neighbour_max(values, connectivity) * fg
        # Pointer jumping: a value names a pixel of the same component (the one that started
        # with it), whose own value is at least as large; taking it doubles the reach per step.
        source = (n - values.flatten(1)).long().clamp(0, n - 1)
        jumped = values.flatten(1).gather(1, source).view_as(values)
        values = torch.maximum(values, jumped) * fg
        if step % check_every == 0:  # the only host sync: once every few steps
            if torch.equal(values, previous):
                break
            previous = values
    source = (n - values.flatten(1)).long().clamp(0, n - 1)  # (B, n) component's first pixel
    roots = (source == index.view(1, n)) & mask.flatten(1)
    rank = roots.cumsum(1)  # consecutive ids 1..num in raster order of first pixels
    labels = rank.gather(1, source) * mask.flatten(1)
    return labels.view(batch, height, width), roots.sum(1)


def label_components(
    mask: Tensor, connectivity: int = 8, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Label the connected components of each image of a batch of binary masks.

    Both methods give identical labels: 0 for background and 1..num per image, numbered in
    raster order of each component's first pixel (scipy's order).

    Args:
        mask: bool (B, H, W).
        connectivity: 8 (diagonal neighbours join) or 4.
        method: "scipy" (on the host, fast on CPU), "torch" (label propagation with max-pooling,
            stays on the device) or "auto" (torch on CUDA, scipy otherwise).

    Returns:
        labels int64 (B, H, W) and the number of components per image, int64 (B,).
    """
    _check_connectivity(connectivity)
    _check_method(method)
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape (B, H, W), got {tuple(mask.shape)}")
    mask = mask.bool()
    if method == "auto":
        method = "scipy" if mask.device.type == "cpu" else "torch"
    if method == "scipy":
        return _label_scipy(mask, connectivity)
    return _label_torch(mask, connectivity)


def _count_lesions(
    pred: Tensor, truth: Tensor, connectivity: int, min_overlap: float, method: str
) -> tuple[Tensor, Tensor]:
    """Per-image (lesions, detected), int64 (B,), from bool (B, H, W) masks."""
    labels, _ = label_components(truth, connectivity, method)
    batch = labels.shape[0]
    flat = labels.flatten(1)  # (B, H*W), ids <= H*W
    # Fixed-size per-image histograms (one bin per possible id) avoid a data-dependent size,
    # hence a host sync; bin 0 is the background.
    size = torch.zeros(batch, flat.shape[1] + 1, dtype=torch.int32, device=flat.device)
    covered = torch.zeros_like(size)
    size.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    covered.scatter_add_(1, flat, pred.flatten(1).int())
    size, covered = size[:, 1:], covered[:, 1:]
    present = size > 0
    detected = present & (covered > min_overlap * size)
    return present.sum(1), detected.sum(1)


def lesion_counts(
    logits: Tensor,
    target: Tensor,
    threshold: float = 0.5,
    connectivity: int = 8,
    min_overlap: float = 0.0,
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Number of ground-truth lesions and of detected lesions in each image, int64 (B,) each.

    A lesion is a connected component of the target; it is detected when more than
    ``min_overlap`` of its pixels are predicted (0: at least one pixel).
    """
    _check_connectivity(connectivity)
    _check_min_overlap(min_overlap)
    pred, truth = _binarize(logits, target, _logit(threshold))
    return _count_lesions(pred, truth, connectivity, min_overlap, method)


def per_image_stats(
    logits: Tensor,
    target: Tensor,
    threshold: float = 0.5,
    connectivity: int = 8,
    min_overlap: float = 0.0,
    method: str = "auto",
) -> dict[str, Tensor]:
    """Per-image rows for a results table: tensors (B,) keyed dice, precision, recall (float,
    with the empty-mask convention of this module), lesions, lesions_detected, pred_area and
    true_area (pixel counts, int64)."""
    _check_connectivity(connectivity)
    _check_min_overlap(min_overlap)
    pred, truth = _binarize(logits, target, _logit(threshold))
    stats = _per_image_scores(pred, truth)
    stats["lesions"], stats["lesions_detected"] = _count_lesions(
        pred, truth, connectivity, min_overlap, method
    )
    return stats


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class PerImageDice(Metric):
    """Mean over images of per-image Dice (both masks empty -> 1, exactly one empty -> 0)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logit_threshold = _logit(threshold)
        self.add_state("dice_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.tensor(0), dist_reduce_fx="sum")

    def counted(self, scores: dict[str, Tensor]) -> Tensor:
        """Which images of a batch enter the mean, bool (B,): all of them."""
        return torch.ones_like(scores["dice"], dtype=torch.bool)

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = _binarize(logits, target, self.logit_threshold)
        scores = _per_image_scores(pred, truth)
        counted = self.counted(scores)
        self.dice_sum += (scores["dice"] * counted).sum(dtype=torch.float64)
        self.num_images += counted.sum()

    def compute(self) -> Tensor:
        return (self.dice_sum / self.num_images).float()


class _PooledFromLogits:
    """Mixin: threshold logits, then feed integer labels to a torchmetrics binary metric.

    Each metric built on it gives its ratio's denominator, ``_denominator(tp, fp, fn)``, so
    that ``compute`` can apply the empty-mask convention where it is 0.

    Integer inputs and ``validate_args=False`` keep torchmetrics from inspecting values (its
    float path checks whether preds lie in [0, 1], a host sync, and would skip the sigmoid on
    logits that happen to lie there).
    """

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(validate_args=False, **kwargs)
        self.logit_threshold = _logit(threshold)

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = _binarize(logits, target, self.logit_threshold)
        super().update(pred.long(), truth.long())

    def compute(self) -> Tensor:
        # torchmetrics gives 0 for a zero denominator; only that case changes to the module's
        # convention, so every other value stays torchmetrics' own, bit for bit.
        value = super().compute()
        tp, fp, _, fn = self._final_state()
        both_empty = (tp + fp == 0) & (tp + fn == 0)  # nothing predicted, nothing to find
        return torch.where(self._denominator(tp, fp, fn) > 0, value, both_empty.to(value.dtype))


class PooledDice(_PooledFromLogits, BinaryF1Score):
    """Dice over all pixels seen, 2TP / (2TP + FP + FN) (= pixel-wise binary F1); 1 when
    prediction and truth are empty everywhere."""

    @staticmethod
    def _denominator(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return 2 * tp + fp + fn


class PooledPrecision(_PooledFromLogits, BinaryPrecision):
    """Precision over all pixels seen, TP / (TP + FP); with nothing predicted, 1 if the truth is
    empty everywhere, else 0."""

    @staticmethod
    def _denominator(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return tp + fp


class PooledRecall(_PooledFromLogits, BinaryRecall):
    """Recall over all pixels seen, TP / (TP + FN); with no tumour pixel, 1 if nothing is
    predicted, else 0."""

    @staticmethod
    def _denominator(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return tp + fn


class LesionRecall(Metric):
    """Share of ground-truth lesions detected by the prediction, over all images seen.

    Every connected component of the target is one lesion; it is detected when more than
    ``min_overlap`` of its pixels are predicted (0: any overlapping pixel). With no lesion in
    anything seen: 1 if nothing was predicted either, else 0.

    Args:
        threshold: probability threshold applied to sigmoid(logits).
        connectivity: 8 (diagonal neighbours belong to the same lesion) or 4.
        min_overlap: fraction in [0, 1) of a lesion's pixels that must be exceeded.
        method: connected-component method, see ``label_components``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        threshold: float = 0.5,
        connectivity: int = 8,
        min_overlap: float = 0.0,
        method: str = "auto",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        _check_connectivity(connectivity)
        _check_min_overlap(min_overlap)
        _check_method(method)
        self.logit_threshold = _logit(threshold)
        self.connectivity = connectivity
        self.min_overlap = float(min_overlap)
        self.method = method
        self.add_state("detected", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("predicted", torch.tensor(0), dist_reduce_fx="sum")  # predicted pixels

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = _binarize(logits, target, self.logit_threshold)
        lesions, detected = _count_lesions(
            pred, truth, self.connectivity, self.min_overlap, self.method
        )
        self.detected += detected.sum()
        self.total += lesions.sum()
        self.predicted += pred.sum()

    def compute(self) -> Tensor:
        ratio = self.detected / self.total.clamp_min(1)
        both_empty = self.predicted == 0  # where total == 0, the truth is empty too
        return torch.where(self.total > 0, ratio, both_empty.to(ratio.dtype))


class TumorDice(PerImageDice):
    """Mean per-image Dice over the images whose truth holds a tumour; NaN when none does."""

    def counted(self, scores: dict[str, Tensor]) -> Tensor:
        return scores["true_area"] > 0


class EmptyCorrect(Metric):
    """Share of tumour-free images predicted empty (no pixel above threshold); NaN when no
    image is tumour-free."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logit_threshold = _logit(threshold)
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_empty", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = _binarize(logits, target, self.logit_threshold)
        empty = ~truth.flatten(1).any(1)
        self.correct += (empty & ~pred.flatten(1).any(1)).sum()
        self.num_empty += empty.sum()

    def compute(self) -> Tensor:
        return self.correct / self.num_empty


class FalsePositiveLesionsPerEmpty(Metric):
    """Connected components of the prediction on tumour-free images, per tumour-free image;
    NaN when no image is tumour-free. On such an image every predicted lesion is false.

    Args:
        threshold: probability threshold applied to sigmoid(logits).
        connectivity: 8 or 4, as for ``LesionRecall``.
        method: connected-component method, see ``label_components``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, threshold: float = 0.5, connectivity: int = 8, method: str = "auto", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        _check_connectivity(connectivity)
        _check_method(method)
        self.logit_threshold = _logit(threshold)
        self.connectivity = connectivity
        self.method = method
        self.add_state("fp_lesions", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_empty", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = _binarize(logits, target, self.logit_threshold)
        empty = ~truth.flatten(1).any(1)  # (B,)
        # Masking rather than indexing keeps the batch's shape, hence no host sync.
        _, lesions = label_components(pred & empty.view(-1, 1, 1), self.connectivity, self.method)
        self.fp_lesions += lesions.sum()
        self.num_empty += empty.sum()

    def compute(self) -> Tensor:
        return self.fp_lesions / self.num_empty


def build_metrics(
    threshold: float = 0.5, connectivity: int = 8, min_overlap: float = 0.0, method: str = "auto"
) -> MetricCollection:
    """The metrics brainseg logs: dice, dice_pooled, precision, recall, lesion_recall.

    Use ``build_metrics(...).clone(prefix="val/")`` per stage, call ``update(logits, target)``
    each step and ``compute()`` at the end of the epoch.
    """
    return MetricCollection(
        {
            "dice": PerImageDice(threshold),
            "dice_pooled": PooledDice(threshold),
            "precision": PooledPrecision(threshold),
            "recall": PooledRecall(threshold),
            "lesion_recall": LesionRecall(threshold, connectivity, min_overlap, method),
        },
        # The three pooled metrics share one set of TP/FP/TN/FN counts; stating the groups
        # skips torchmetrics' state comparison after the first update.
        compute_groups=[["dice_pooled", "precision", "recall"]],
    )


def build_empty_slice_metrics(
    threshold: float = 0.5, connectivity: int = 8, method: str = "auto"
) -> MetricCollection:
    """The metrics of sets with tumour-free slices: dice_tumor, empty_correct and
    fp_lesions_per_empty (NaN when the set lacks the slices they average over; see the module
    docstring for when to log them)."""
    return MetricCollection(
        {
            "dice_tumor": TumorDice(threshold),
            "empty_correct": EmptyCorrect(threshold),
            "fp_lesions_per_empty": FalsePositiveLesionsPerEmpty(threshold, connectivity, method),
        }
    )
