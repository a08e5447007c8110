"""The source interface: a deterministic sequence of (image, mask, meta) slices."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

LABEL_NAMES = {0: "unknown", 1: "meningioma", 2: "glioma", 3: "pituitary"}


class Sample(NamedTuple):
    """One slice of a source.

    Attributes:
        image: (H, W) array of any integer or float dtype.
        mask: (H, W) array; non-zero is tumor.
        meta: {"id": str, "pid": str ("" when unknown), "label": int (0 unknown,
            1 meningioma, 2 glioma, 3 pituitary)}.
    """

    image: np.ndarray
    mask: np.ndarray
    meta: dict


class Source(ABC):
    """A data set of 2D slices with tumor masks, read in a fixed order.

    Attributes:
        pid_file: the file that gives the slices their patient ids (named in split errors
            and warnings); None when the slices carry them.
    """

    pid_file: Path | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Sample]: ...

    @abstractmethod
    def cache_key(self) -> str:
        """A string that changes whenever the content or configuration of the source does."""

    def prepare(self) -> None:
        """Download or extract what the source needs; a no-op for local sources."""
        return None

    def folds(self) -> dict[str, int] | None:
        """Patient-wise cross-validation fold (1..5) per slice id, when the source knows them."""
        return None

    def patient_ids(self) -> dict[str, str]:
        """{slice id: patient id ("" when unknown)} in source order; reads every slice."""
        return {sample.meta["id"]: sample.meta["pid"] for sample in self}

    def verify(self) -> list[str]:
        """Read every slice and return one line per problem found (empty when all is well)."""
        problems: list[str] = []
        for sample in self:
            problems += check_pair(sample.image, sample.mask, sample.meta["id"])
        return problems


def check_pair(image: np.ndarray, mask: np.ndarray, name: str) -> list[str]:
    """Problems of one image/mask pair: dimensions, sizes and mask values."""
    if image.ndim != 2:
        return [f"{name}: image has shape {image.shape}, expected a 2D grey slice"]
    if mask.shape != image.shape:
        return [f"{name}: image is {_hw(image)} but mask is {_hw(mask)}; resize the mask to match"]
    values = np.unique(mask)
    if not is_binary(values):
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        return [
            f"{name}: mask is not binary (values {shown}); save masks with values 0/255 or 0/1, "
            "resampled with nearest neighbour"
        ]
    return []


def is_binary(values: np.ndarray) -> bool:
    """True when the unique mask values are a subset of {0, 1} or of {0, 255}."""
    allowed = ({0, 1}, {0, 255})
    found = {int(v) for v in values if float(v).is_integer()}
    return len(found) == len(values) and any(found <= a for a in allowed)


def first_few(items: Sequence[str], limit: int = 5) -> str:
    """ "a, b, c" or, past `limit` items, "a, b, c, d, e and 7 more"."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def natural_key(text: str) -> list:
    """Sort key that orders "2" before "10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _hw(array: np.ndarray) -> str:
    return "x".join(str(s) for s in array.shape)
