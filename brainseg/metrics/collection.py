"""The torchmetrics ``Metric``s brainseg logs (what each key means: see ``brainseg.metrics``;
which of them a stage logs: ``brainseg.metrics.registry``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryF1Score, BinaryPrecision, BinaryRecall

from brainseg.metrics.components import check_connectivity, check_method, label_components
from brainseg.metrics.scores import (
    binarize,
    check_min_overlap,
    check_threshold,
    count_lesions,
    per_image_scores,
)


class _ThresholdedMetric(Metric):
    """A metric of masks thresholded from logits, summed over batches and processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        check_threshold(threshold)
        self.threshold = threshold


class PerImageDice(_ThresholdedMetric):
    """Mean over images of per-image Dice (both masks empty -> 1, exactly one empty -> 0)."""

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        self.add_state("dice_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.tensor(0), dist_reduce_fx="sum")

    def counted(self, scores: dict[str, Tensor]) -> Tensor:
        """Which images of a batch enter the mean, bool (B,): all of them."""
        return torch.ones_like(scores["dice"], dtype=torch.bool)

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = binarize(logits, target, self.threshold)
        scores = per_image_scores(pred, truth)
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
        check_threshold(threshold)
        # Kept by torchmetrics as self.threshold, which update reads (torchmetrics itself
        # ignores it on integer inputs).
        super().__init__(threshold=threshold, validate_args=False, **kwargs)

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = binarize(logits, target, self.threshold)
        super().update(pred.long(), truth.long())

    def compute(self) -> Tensor:
        # torchmetrics gives 0 for a zero denominator; only that case changes to brainseg.metrics'
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


class LesionRecall(_ThresholdedMetric):
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

    def __init__(
        self,
        threshold: float = 0.5,
        connectivity: int = 8,
        min_overlap: float = 0.0,
        method: str = "auto",
        **kwargs,
    ) -> None:
        super().__init__(threshold, **kwargs)
        check_connectivity(connectivity)
        check_min_overlap(min_overlap)
        check_method(method)
        self.connectivity = connectivity
        self.min_overlap = float(min_overlap)
        self.method = method
        self.add_state("detected", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("predicted", torch.tensor(0), dist_reduce_fx="sum")  # predicted pixels

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = binarize(logits, target, self.threshold)
        lesions, detected = count_lesions(
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


class EmptyCorrect(_ThresholdedMetric):
    """Share of tumour-free images predicted empty (no pixel above threshold); NaN when no
    image is tumour-free."""

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_empty", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = binarize(logits, target, self.threshold)
        empty = ~truth.flatten(1).any(1)
        self.correct += (empty & ~pred.flatten(1).any(1)).sum()
        self.num_empty += empty.sum()

    def compute(self) -> Tensor:
        return self.correct / self.num_empty


class FalsePositiveLesionsPerEmpty(_ThresholdedMetric):
    """Connected components of the prediction on tumour-free images, per tumour-free image;
    NaN when no image is tumour-free. On such an image every predicted lesion is false.

    Args:
        threshold: probability threshold applied to sigmoid(logits).
        connectivity: 8 or 4, as for ``LesionRecall``.
        method: connected-component method, see ``label_components``.
    """

    higher_is_better = False

    def __init__(
        self, threshold: float = 0.5, connectivity: int = 8, method: str = "auto", **kwargs
    ) -> None:
        super().__init__(threshold, **kwargs)
        check_connectivity(connectivity)
        check_method(method)
        self.connectivity = connectivity
        self.method = method
        self.add_state("fp_lesions", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_empty", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred, truth = binarize(logits, target, self.threshold)
        empty = ~truth.flatten(1).any(1)  # (B,)
        # Masking rather than indexing keeps the batch's shape, hence no host sync.
        _, lesions = label_components(pred & empty.view(-1, 1, 1), self.connectivity, self.method)
        self.fp_lesions += lesions.sum()
        self.num_empty += empty.sum()

    def compute(self) -> Tensor:
        return self.fp_lesions / self.num_empty
