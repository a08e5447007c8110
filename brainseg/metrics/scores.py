"""From logits to masks, and per-image scores of binary masks.

The one rule for turning the network's logits into a mask, everywhere in brainseg: a pixel is
tumour when ``sigmoid(logit) > threshold``. ``probabilities`` and ``to_masks`` apply it in two
steps (for code that shows or resizes probabilities); ``logits_to_masks`` applies it in logit
space, ``logit > log(threshold / (1 - threshold))``, without computing a sigmoid (the metrics).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from brainseg.metrics.components import check_connectivity, label_components


def probabilities(logits: Tensor) -> Tensor:
    """Tumour probabilities, float32, of logits of any shape and floating dtype."""
    return torch.sigmoid(logits.float())


def to_masks(probs: Tensor, threshold: float) -> Tensor:
    """Bool masks ``probs > threshold`` of probabilities of any shape."""
    check_threshold(threshold)
    return probs > threshold


def logits_to_masks(logits: Tensor, threshold: float) -> Tensor:
    """Bool masks of logits of any shape: the decision of ``to_masks(probabilities(logits),
    threshold)`` (up to float rounding at the threshold), taken in logit space."""
    check_threshold(threshold)
    return logits > math.log(threshold / (1.0 - threshold))


def check_threshold(threshold: float) -> None:
    """Raise a ValueError naming ``threshold`` unless it lies in (0, 1)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"threshold must be in (0, 1), got {threshold}; it applies to sigmoid(logit)"
        )


def check_min_overlap(min_overlap: float) -> None:
    """Raise a ValueError naming ``min_overlap`` unless it lies in [0, 1)."""
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(
            f"min_overlap must be in [0, 1), got {min_overlap}; a lesion counts as detected when "
            "more than this fraction of its pixels is predicted (0 = any pixel)"
        )


def binarize(logits: Tensor, target: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(pred, truth) as bool (B, H, W) from logits (B, 1, H, W) and a {0, 1} target of shape
    (B, 1, H, W) or (B, H, W), after checking the shapes."""
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
    return logits_to_masks(logits[:, 0], threshold), target != 0


def _safe_ratio(num: Tensor, den: Tensor, both_empty: Tensor) -> Tensor:
    """num / den, and where den == 0: 1 if prediction and truth are both empty, else 0."""
    return torch.where(den > 0, num / den.clamp_min(1), both_empty.float())


def per_image_scores(pred: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Per-image Dice, precision, recall and areas of bool (B, H, W) masks, tensors (B,)."""
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


def count_lesions(
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
    check_connectivity(connectivity)
    check_min_overlap(min_overlap)
    pred, truth = binarize(logits, target, threshold)
    return count_lesions(pred, truth, connectivity, min_overlap, method)


def per_image_stats(
    logits: Tensor,
    target: Tensor,
    threshold: float = 0.5,
    connectivity: int = 8,
    min_overlap: float = 0.0,
    method: str = "auto",
) -> dict[str, Tensor]:
    """Per-image rows for a results table: tensors (B,) keyed dice, precision, recall (float,
    with the empty-mask convention of ``brainseg.metrics``), lesions, lesions_detected,
    pred_area and true_area (pixel counts, int64)."""
    check_connectivity(connectivity)
    check_min_overlap(min_overlap)
    pred, truth = binarize(logits, target, threshold)
    stats = per_image_scores(pred, truth)
    stats["lesions"], stats["lesions_detected"] = count_lesions(
        pred, truth, connectivity, min_overlap, method
    )
    return stats
