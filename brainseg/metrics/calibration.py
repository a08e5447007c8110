"""Pixel-level calibration: expected calibration error and the reliability diagram's bins."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from brainseg.metrics.scores import binarize, probabilities


class PixelCalibration(Metric):
    """Expected calibration error (L1) of the tumour probability of every pixel seen.

    The binning of torchmetrics' ``BinaryCalibrationError(n_bins, norm="l1")`` (the tests check
    the equality): a pixel's confidence is its probability of tumour, sigmoid(logit), and its
    accuracy is its truth; ECE = sum over bins of |mean confidence - tumour frequency| weighted by
    the bin's share of pixels. Unlike torchmetrics, which keeps every pixel until ``compute``,
    the states are per-bin sums (constant memory, exact across batches and DDP processes), and
    they are the reliability diagram: ``bins()``.

    Args:
        n_bins: equal-width probability bins over [0, 1].
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        if n_bins < 1:
            raise ValueError(f"n_bins must be at least 1, got {n_bins}")
        self.n_bins = int(n_bins)
        # torchmetrics' bucketize(..., right=True) - 1 gives a probability of exactly 1.0 an
        # extra last bin; it is kept, so that the sums match torchmetrics' own.
        for name in ("count", "confidence_sum", "positive_sum"):
            zeros = torch.zeros(self.n_bins + 1, dtype=torch.float64)
            self.add_state(name, zeros, dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        _, truth = binarize(logits, target, 0.5)  # shapes checked; the threshold is unused
        probs = probabilities(logits[:, 0]).flatten()
        truth = truth.flatten().to(torch.float64)
        edges = torch.linspace(0, 1, self.n_bins + 1, device=probs.device, dtype=probs.dtype)
        index = torch.bucketize(probs, edges, right=True) - 1
        self.count.scatter_add_(0, index, torch.ones_like(truth))
        self.confidence_sum.scatter_add_(0, index, probs.to(torch.float64))
        self.positive_sum.scatter_add_(0, index, truth)

    def compute(self) -> Tensor:
        gap = (self.confidence_sum - self.positive_sum).abs().sum()
        return (gap / self.count.sum()).float()

    def bins(self) -> dict[str, list[float]]:
        """The reliability diagram: per bin (lower edge), pixel count, summed confidence and
        summed truth; mean confidence = confidence_sum / count, frequency = positive_sum / count.
        Runs are pooled by adding these sums."""
        edges = torch.linspace(0, 1, self.n_bins + 1).tolist()
        return {
            "lower_edge": edges,
            "count": self.count.tolist(),
            "confidence_sum": self.confidence_sum.tolist(),
            "positive_sum": self.positive_sum.tolist(),
        }
