"""Every metric brainseg computes, declared once: what it is called, which way is better, its
range and format, how it aggregates, and how empty masks score.

Everything else derives from these declarations: the columns of ``per_image.csv``, the metrics
the Lightning module logs (hence ``metrics.json`` and the W&B summary), the report's table,
statistics and strata, the report's completeness check, and the W&B dashboard's panels.

Adding a metric is one function and one declaration::

    def share_predicted(pred, truth, **_):          # bool (B, H, W) masks -> {column: (B,)}
        return {"share_predicted": pred.flatten(1).float().mean(1)}

    register(
        MetricSpec("share_predicted", "Predicted share", higher_is_better=False,
                   kind="per_image", empty="0 when nothing is predicted",
                   value=Mean("share_predicted")),
        columns=share_predicted,
    )

A metric's value comes from one of two places:

- its per-image rows (``value``), for a metric without ``build``: the module computes its columns
  once per batch, writes them to ``per_image.csv`` and logs ``value`` over the rows at the end of
  the epoch;
- a torchmetrics ``Metric`` of (logits, target) (``build``), for metrics with sum states that the
  module updates every step (Dice, pooled scores, lesion recall, calibration). Where such a
  metric also has a ``value``, it is the same number recomputed from ``per_image.csv`` (the tests
  check the equality), which the report needs for its statistics and strata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor
from torchmetrics import Metric, MetricCollection

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
from brainseg.metrics.components import check_connectivity, label_components
from brainseg.metrics.scores import binarize, check_min_overlap, count_lesions, per_image_scores
from brainseg.metrics.surface import NSD_TOLERANCE, surface_scores

# A per-image column function: bool masks (B, H, W) and the metric settings (threshold,
# connectivity, min_overlap, method) -> {column: tensor (B,)}.
ColumnFn = Callable[..., dict[str, Tensor]]
KINDS = ("per_image", "pooled", "per_lesion", "cost")
STAGES = ("val", "test")
# What identifies a row of per_image.csv, before the metric columns.
ROW_KEYS = ("id", "pid", "label")


# ------------------------------------------------------------------- values from per-image rows


def _subset_mask(rows: Mapping[str, np.ndarray], subset: str | None) -> np.ndarray:
    n = len(next(iter(rows.values())))
    if subset is None:
        return np.ones(n, dtype=bool)
    area = np.asarray(rows["true_area"], dtype=float)
    return area > 0 if subset == "tumor" else area == 0


@dataclass(frozen=True)
class Mean:
    """The mean over rows of a column (after ``transform``), over the rows of ``subset``: None
    (all), "tumor" (true_area > 0) or "tumor_free" (true_area == 0); NaN without such rows."""

    column: str
    subset: str | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.subset is None else (self.column, "true_area")

    def __call__(self, rows: Mapping[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
        """Weighted means, one per row of ``weights`` (R, N): N rows' multiplicities (all ones
        for the data itself; a bootstrap resample's counts otherwise)."""
        keep = _subset_mask(rows, self.subset)
        x = np.asarray(rows[self.column], dtype=float)[keep]
        if self.transform is not None:
            x = self.transform(x).astype(float)
        w = weights[:, keep]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ x) / w.sum(1)


@dataclass(frozen=True)
class Ratio:
    """sum(numerator) / sum(denominator) over all rows, each a weighted sum of columns; where
    the denominator is 0: 1 when nothing is predicted and nothing is true anywhere, else 0."""

    numerator: Mapping[str, float]
    denominator: Mapping[str, float]

    @property
    def columns(self) -> tuple[str, ...]:
        names = [*self.numerator, *self.denominator, "pred_area", "true_area"]
        return tuple(dict.fromkeys(names))

    def __call__(self, rows: Mapping[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
        def total(terms: Mapping[str, float]) -> np.ndarray:
            return sum(c * (weights @ np.asarray(rows[k], dtype=float)) for k, c in terms.items())

        num, den = total(self.numerator), total(self.denominator)
        both_empty = total({"pred_area": 1.0, "true_area": 1.0}) == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), both_empty.astype(float))


Value = Mean | Ratio


@dataclass(frozen=True)
class MetricSpec:
    """One metric's declaration.

    Attributes:
        name: its key in per_image.csv, metrics.json (`test/<name>`) and the logs (`val/<name>`).
        label: how the report and the dashboard name it.
        higher_is_better: its direction.
        kind: "per_image" (a mean over images), "pooled" (over all pixels at once),
            "per_lesion" (over all lesions at once) or "cost" (not a quality metric).
        empty: how empty predictions and empty truths score (docs/metrics.md lists these).
        low, high: its range; digits: decimals shown; unit: e.g. "px" ("" for a ratio).
        value: how it is computed from per-image rows (the report's statistics and strata; and
            the logged value when `build` is None); None: not from rows.
        build: its torchmetrics Metric from the metric settings; None: logged from the rows.
        group: metrics with the same group share one state (torchmetrics compute groups).
        stages: where the module logs it ("val", "test"); () for what it logs otherwise.
        tumor_free_only: logged only when the evaluated set has a tumour-free slice.
        wilcoxon: the statistics test per-image differences of its column (a `Mean` over all).
    """

    name: str
    label: str
    higher_is_better: bool
    kind: str
    empty: str
    low: float = 0.0
    high: float = 1.0
    digits: int = 4
    unit: str = ""
    value: Value | None = None
    build: Callable[[dict], Metric] | None = field(default=None, compare=False)
    group: str | None = None
    stages: tuple[str, ...] = STAGES
    tumor_free_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"metric {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )
        if unknown := set(self.stages) - set(STAGES):
            raise ValueError(
                f"metric {self.name!r}: unknown stages {sorted(unknown)}; use {STAGES}"
            )
        if self.stages and self.build is None and self.value is None:
            raise ValueError(
                f"metric {self.name!r} is logged at {self.stages} but has neither `build` (a "
                "torchmetrics Metric) nor `value` (from per-image columns): give one"
            )

    @property
    def wilcoxon(self) -> bool:
        return isinstance(self.value, Mean) and self.value.subset is None

    def format(self, value: float) -> str:
        return "—" if not np.isfinite(value) else f"{value:.{self.digits}f}"


# ------------------------------------------------------------------------ per-image columns


def overlap_columns(pred: Tensor, truth: Tensor, **_) -> dict[str, Tensor]:
    """dice, precision, recall (empty rule of brainseg.metrics), pred_area, true_area and tp
    (the overlap's pixel count)."""
    scores = per_image_scores(pred, truth)
    scores["tp"] = (pred & truth).flatten(1).sum(1)
    return scores


def lesion_columns(
    pred: Tensor,
    truth: Tensor,
    connectivity: int = 8,
    min_overlap: float = 0.0,
    method: str = "auto",
    **_,
) -> dict[str, Tensor]:
    """lesions and lesions_detected (truth components, and those the prediction detects), and
    fp_lesions: predicted components on a tumour-free slice (0 on a tumour slice)."""
    check_connectivity(connectivity)
    check_min_overlap(min_overlap)
    lesions, detected = count_lesions(pred, truth, connectivity, min_overlap, method)
    empty = ~truth.flatten(1).any(1)
    _, false_lesions = label_components(pred & empty.view(-1, 1, 1), connectivity, method)
    return {"lesions": lesions, "lesions_detected": detected, "fp_lesions": false_lesions}


def surface_columns(pred: Tensor, truth: Tensor, **_) -> dict[str, Tensor]:
    """hd95, assd (pixels) and nsd at NSD_TOLERANCE pixels (brainseg.metrics.surface)."""
    return surface_scores(pred, truth, NSD_TOLERANCE)


# Column functions in the order of per_image.csv's columns, with the columns each returns.
COLUMNS: dict[ColumnFn, tuple[str, ...]] = {
    overlap_columns: ("dice", "precision", "recall", "pred_area", "true_area", "tp"),
    lesion_columns: ("lesions", "lesions_detected", "fp_lesions"),
    surface_columns: ("hd95", "assd", "nsd"),
}

# -------------------------------------------------------------------------------- the metrics

_RATIO_EMPTY = "0/0 is 1 when prediction and truth are both empty, else 0"
_TUMOR_FREE = "only on sets with tumour-free slices"
_SURFACE_EMPTY = (
    "both empty: {both}; prediction empty on a tumour slice, or a prediction on a tumour-free "
    "slice: {worst}"
)

METRICS: dict[str, MetricSpec] = {}
_OWN_COLUMNS: dict[str, ColumnFn] = {}  # metric -> the column function registered with it


def register(spec: MetricSpec, columns: ColumnFn | None = None) -> MetricSpec:
    """Adds a metric (after the others: the table's row order). `columns` computes the
    per-image columns its `value` reads that no registered function returns yet.

    Raises:
        ValueError: the name is taken, or `spec.value` reads a column no function returns.
    """
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered; unregister it first")
    known = {name for names in COLUMNS.values() for name in names}
    new = [c for c in (spec.value.columns if spec.value else ()) if c not in known]
    if new and columns is None:
        raise ValueError(
            f"metric {spec.name!r} reads per-image column(s) {new} that no column function "
            "returns: pass `columns=` a function returning them"
        )
    if columns is not None and columns not in COLUMNS:
        COLUMNS[columns] = tuple(new)
        _OWN_COLUMNS[spec.name] = columns
    METRICS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Removes a metric, and the column function registered with it."""
    METRICS.pop(name)
    if (fn := _OWN_COLUMNS.pop(name, None)) is not None:
        COLUMNS.pop(fn, None)


@contextmanager
def registered(spec: MetricSpec, columns: ColumnFn | None = None) -> Iterator[MetricSpec]:
    """`register` for the duration of a `with` block (tests, experiments)."""
    register(spec, columns)
    try:
        yield spec
    finally:
        unregister(spec.name)


def get(name: str) -> MetricSpec:
    """The declaration of `name`; a KeyError naming the registered ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"no metric {name!r}; registered: {', '.join(METRICS)}") from None


def label(name: str) -> str:
    """The metric's label, or `name` itself for a key no metric declares."""
    return METRICS[name].label if name in METRICS else name


def specs(stage: str | None = None) -> list[MetricSpec]:
    """The registered metrics in order; with `stage`, those the module logs there."""
    return [s for s in METRICS.values() if stage is None or stage in s.stages]


def quality_metrics() -> list[MetricSpec]:
    """Every metric of segmentation quality (not cost), in order."""
    return [s for s in METRICS.values() if s.kind != "cost"]


def row_metrics() -> list[MetricSpec]:
    """The metrics computable from per_image.csv (statistics and strata)."""
    return [s for s in METRICS.values() if s.value is not None]


def per_image_columns() -> list[str]:
    """Every metric column of per_image.csv, in order."""
    return [name for names in COLUMNS.values() for name in names]


def required_columns() -> tuple[str, ...]:
    """The columns a per_image.csv must have to be used: the row keys and the headline Dice
    (older records lack the columns of metrics added since, and stay usable)."""
    return (*ROW_KEYS, "dice")


def column_functions(stage: str) -> list[ColumnFn]:
    """The column functions the module runs at `stage`: every one at test (per_image.csv has
    every column), at validation those of metrics logged from rows there."""
    if stage == "test":
        return list(COLUMNS)
    needed = {c for s in specs(stage) if s.build is None and s.value for c in s.value.columns}
    return [fn for fn, names in COLUMNS.items() if needed & set(names)]


def compute_columns(
    logits: Tensor, target: Tensor, metric_args: Mapping | None = None, stage: str = "test"
) -> dict[str, Tensor]:
    """Per-image columns {name: (B,)} of a batch, thresholded as brainseg.metrics does."""
    args = dict(metric_args or {})
    pred, truth = binarize(logits, target, args.get("threshold", 0.5))
    columns: dict[str, Tensor] = {}
    for fn in column_functions(stage):
        columns.update(fn(pred, truth, **args))
    return columns


def value_of(spec: MetricSpec, rows: Mapping[str, np.ndarray]) -> float:
    """`spec`'s value over per-image rows (columns as arrays); NaN when a column it reads is
    absent (an older per_image.csv) or it has no rows to average."""
    if spec.value is None or any(c not in rows for c in spec.value.columns):
        return float("nan")
    n = len(rows[spec.value.columns[0]])
    return float(spec.value(rows, np.ones((1, n)))[0]) if n else float("nan")


def build_metrics(
    threshold: float = 0.5,
    connectivity: int = 8,
    min_overlap: float = 0.0,
    method: str = "auto",
    stage: str = "test",
) -> MetricCollection:
    """The torchmetrics metrics of `stage` that every set logs (declared with `build`, not
    tumour-free-only): dice, dice_pooled, precision, recall, lesion_recall and ece by default.

    Use ``build_metrics(...).clone(prefix="val/")`` per stage, call ``update(logits, target)``
    each step and ``compute()`` at the end of the epoch.
    """
    args = _args(threshold, connectivity, min_overlap, method)
    chosen = [s for s in specs(stage) if s.build and not s.tumor_free_only]
    return _collection(chosen, args)


def build_empty_slice_metrics(
    threshold: float = 0.5, connectivity: int = 8, method: str = "auto", stage: str = "test"
) -> MetricCollection:
    """The metrics of sets with tumour-free slices (declared `tumor_free_only`): dice_tumor,
    empty_correct and fp_lesions_per_empty by default (NaN when the set lacks the slices they
    average over; see ``brainseg.metrics`` for when to log them)."""
    args = _args(threshold, connectivity, 0.0, method)
    return _collection([s for s in specs(stage) if s.build and s.tumor_free_only], args)


def _args(threshold: float, connectivity: int, min_overlap: float, method: str) -> dict:
    return {
        "threshold": threshold,
        "connectivity": connectivity,
        "min_overlap": min_overlap,
        "method": method,
    }


def _collection(chosen: list[MetricSpec], args: dict) -> MetricCollection:
    groups: dict[str, list[str]] = {}
    for spec in chosen:
        if spec.group:
            groups.setdefault(spec.group, []).append(spec.name)
    # Metrics of one group share their state: stating the groups skips torchmetrics' state
    # comparison after the first update.
    shared = [names for names in groups.values() if len(names) > 1]
    return MetricCollection(
        {spec.name: spec.build(args) for spec in chosen}, compute_groups=shared or True
    )


def _declare() -> None:
    t = "threshold"
    mean_dice = "the mean over images of each image's Dice, 2TP / (2TP + FP + FN)"
    register(
        MetricSpec(
            "dice",
            "Dice",
            True,
            "per_image",
            f"per image: {_RATIO_EMPTY} ({mean_dice})",
            value=Mean("dice"),
            build=lambda a: PerImageDice(a[t]),
        )
    )
    pooled = {
        "dice_pooled": ("Dice (pooled)", {"tp": 2.0}, {"pred_area": 1.0, "true_area": 1.0}),
        "precision": ("Precision", {"tp": 1.0}, {"pred_area": 1.0}),
        "recall": ("Recall", {"tp": 1.0}, {"true_area": 1.0}),
    }
    classes = {"dice_pooled": PooledDice, "precision": PooledPrecision, "recall": PooledRecall}
    for name, (text, num, den) in pooled.items():
        register(
            MetricSpec(
                name,
                text,
                True,
                "pooled",
                f"over all pixels: {_RATIO_EMPTY}",
                value=Ratio(num, den),
                build=lambda a, cls=classes[name]: cls(a[t]),
                group="pooled",
            )
        )
    register(
        MetricSpec(
            "lesion_recall",
            "Lesion recall",
            True,
            "per_lesion",
            "over all lesions: no lesion anywhere is 1 when nothing is predicted, else 0",
            value=Ratio({"lesions_detected": 1.0}, {"lesions": 1.0}),
            build=lambda a: LesionRecall(
                a[t], a["connectivity"], a["min_overlap"], a.get("method", "auto")
            ),
        )
    )
    register(
        MetricSpec(
            "dice_tumor",
            "Dice (tumor slices)",
            True,
            "per_image",
            f"mean Dice over tumour slices; NaN without one; {_TUMOR_FREE}",
            value=Mean("dice", subset="tumor"),
            build=lambda a: TumorDice(a[t]),
            tumor_free_only=True,
        )
    )
    register(
        MetricSpec(
            "empty_correct",
            "Empty slices predicted empty",
            True,
            "per_image",
            f"share of tumour-free slices with no predicted pixel; {_TUMOR_FREE}",
            value=Mean("pred_area", subset="tumor_free", transform=lambda area: area == 0),
            build=lambda a: EmptyCorrect(a[t]),
            tumor_free_only=True,
        )
    )
    register(
        MetricSpec(
            "fp_lesions_per_empty",
            "False-positive lesions per empty slice",
            False,
            "per_image",
            f"predicted components per tumour-free slice; {_TUMOR_FREE}",
            high=math.inf,
            digits=3,
            value=Mean("fp_lesions", subset="tumor_free"),
            build=lambda a: FalsePositiveLesionsPerEmpty(
                a[t], a["connectivity"], a.get("method", "auto")
            ),
            tumor_free_only=True,
        )
    )
    worst = "the image diagonal (worst)"
    for name, text in (("hd95", "HD95 (px)"), ("assd", "ASSD (px)")):
        register(
            MetricSpec(
                name,
                text,
                False,
                "per_image",
                _SURFACE_EMPTY.format(both="0", worst=worst),
                high=math.inf,
                digits=2,
                unit="px",
                value=Mean(name),
                stages=("test",),
            )
        )
    register(
        MetricSpec(
            "nsd",
            f"NSD ({NSD_TOLERANCE:g} px)",
            True,
            "per_image",
            _SURFACE_EMPTY.format(both="1", worst="0"),
            value=Mean("nsd"),
            stages=("test",),
        )
    )
    register(
        MetricSpec(
            "ece",
            "Calibration error (ECE)",
            False,
            "pooled",
            "over all pixels, 15 probability bins; defined on any set",
            build=lambda a: PixelCalibration(),
        )
    )
    register(
        MetricSpec(
            "inference_ms",
            "Inference time (ms)",
            False,
            "cost",
            "not a mask metric",
            high=math.inf,
            digits=2,
            unit="ms",
            stages=(),
        )
    )


_declare()
