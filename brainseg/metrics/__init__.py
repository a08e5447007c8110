"""Segmentation metrics for binary masks; the code lives in ``brainseg.metrics.collection``."""

from brainseg.metrics.collection import (
    EmptyCorrect,
    FalsePositiveLesionsPerEmpty,
    LesionRecall,
    PerImageDice,
    PooledDice,
    PooledPrecision,
    PooledRecall,
    TumorDice,
    build_empty_slice_metrics,
    build_metrics,
    label_components,
    lesion_counts,
    per_image_stats,
)

__all__ = [
    "EmptyCorrect",
    "FalsePositiveLesionsPerEmpty",
    "LesionRecall",
    "PerImageDice",
    "PooledDice",
    "PooledPrecision",
    "PooledRecall",
    "TumorDice",
    "build_empty_slice_metrics",
    "build_metrics",
    "label_components",
    "lesion_counts",
    "per_image_stats",
]
