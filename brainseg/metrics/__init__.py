"""Segmentation metrics for binary masks, as torchmetrics ``Metric``s that accumulate on the device.

Layout: ``registry`` (every metric declared once: label, direction, range, format, kind,
empty-mask rule; the per-image columns and the collections the Lightning module logs derive from
it), ``scores`` (logits to probabilities and masks, per-image scores), ``components``
(connected-component labelling), ``collection`` (the ``Metric`` classes), ``surface`` (HD95,
ASSD, NSD from MONAI's surface distances), ``calibration`` (pixel ECE). Everything public is
importable from ``brainseg.metrics``.

Inputs. Every ``update(logits, target)`` takes the network's raw LOGITS (B, 1, H, W) and a target
(B, 1, H, W) or (B, H, W) holding {0, 1}. A pixel is predicted positive when
``sigmoid(logit) > threshold``, the one rule of brainseg: ``logits_to_masks`` applies it as
``logit > log(threshold / (1 - threshold))``; ``probabilities`` then ``to_masks`` apply it in
two steps, for code that needs the probabilities themselves (prediction, figures).

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
- ``ece``: expected calibration error of the pixels' tumour probabilities (``PixelCalibration``).

The boundary metrics ``hd95``, ``assd`` and ``nsd`` (``brainseg.metrics.surface``, with their
own empty-mask rules) are computed from the per-image rows at test time, not by
``build_metrics``.
On a set with tumour-free slices the headline Dice mostly measures "predicted nothing on an
empty slice". ``build_empty_slice_metrics`` separates the two kinds of slice:

- ``dice_tumor``: mean per-image Dice over the slices that contain a tumour only.
- ``empty_correct``: share of tumour-free slices predicted empty.
- ``fp_lesions_per_empty``: false-positive lesions (connected components of the prediction, same
  connectivity) per tumour-free slice.

Their ``compute`` is NaN when the set has no slice of the kind they average over; the Lightning
module logs them only when some slice is tumour-free (and ``dice_tumor`` only when some slice
has a tumour), so a set with a tumour on every slice reports none of them.

States are sums (``dist_reduce_fx="sum"``), so every metric is exact across batches and DDP
processes. ``update`` never copies to the host on the pooled and per-image metrics; lesion
counts label components on the GPU (``label_components(method="torch")``) and synchronise only
to test convergence every few propagation steps.
"""

from brainseg.metrics.calibration import PixelCalibration
from brainseg.metrics.collection import (
    EmptyCorrect,
    FalsePositiveLesionsPerEmpty,
    LesionRecall,
    PerImageDice,
    PooledDice,
    PooledPrecision,
    PooledRecall,
    TumorDice,
)
from brainseg.metrics.components import label_components
from brainseg.metrics.registry import (
    METRICS,
    Mean,
    MetricSpec,
    Ratio,
    build_empty_slice_metrics,
    build_metrics,
    compute_columns,
    register,
    registered,
    unregister,
)
from brainseg.metrics.scores import (
    lesion_counts,
    logits_to_masks,
    per_image_stats,
    probabilities,
    to_masks,
)

__all__ = [
    "METRICS",
    "EmptyCorrect",
    "FalsePositiveLesionsPerEmpty",
    "LesionRecall",
    "Mean",
    "MetricSpec",
    "PerImageDice",
    "PixelCalibration",
    "PooledDice",
    "PooledPrecision",
    "PooledRecall",
    "Ratio",
    "TumorDice",
    "build_empty_slice_metrics",
    "build_metrics",
    "compute_columns",
    "label_components",
    "lesion_counts",
    "logits_to_masks",
    "per_image_stats",
    "probabilities",
    "register",
    "registered",
    "to_masks",
    "unregister",
]
