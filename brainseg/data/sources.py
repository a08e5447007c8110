"""The source interface: a deterministic sequence of (image, mask, meta) slices."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

LABEL_NAMES = {0: "unknown", 1: "meningioma", 2: "glioma", 3: "pituitary"}
# The patient-wise cross-validation folds, as figshare's cvind.mat numbers them.
FOLDS = range(1, 6)
# Tumors cover 0.1-9.7 % of a figshare slice; a mask covering more than half of its image is
# far more likely inverted (background marked as tumor) than a tumor.
INVERTED_MASK_FRACTION = 0.5


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
        """Patient-wise cross-validation fold (in FOLDS) per slice id, where the source has them."""
        return None

    def patient_ids(self) -> dict[str, str]:
        """{slice id: patient id ("" when unknown)} in source order; reads every slice."""
        return {sample.meta["id"]: sample.meta["pid"] for sample in self}

    def verify(self, content: ContentCheck | None = None) -> list[str]:
        """Read every slice and return one line per problem found (empty when all is well);
        each valid slice is also passed to `content`, which collects warnings."""
        problems: list[str] = []
        for sample in self:
            found = check_pair(sample.image, sample.mask, sample.meta["id"])
            problems += found
            if content is not None and not found:
                content.add(sample.meta["id"], sample.image, sample.mask)
        return problems


class ContentCheck:
    """What `verify` warns about in valid slices, without refusing them: masks that cover most
    of their image (inverted?) and images without signal (constant, e.g. all zero).

    Call `add` per slice, then `warnings`.
    """

    def __init__(self, max_mask_fraction: float = INVERTED_MASK_FRACTION) -> None:
        self.max_mask_fraction = max_mask_fraction
        self.count = 0
        self.large_masks: list[str] = []
        self.constant_images: list[str] = []

    def add(self, name: str, image: np.ndarray, mask: np.ndarray) -> None:
        """Record one valid image/mask pair, named `name` in the warnings."""
        self.count += 1
        fraction = np.count_nonzero(mask) / mask.size
        if fraction > self.max_mask_fraction:
            self.large_masks.append(f"{name} ({fraction:.0%})")
        if image.min() == image.max():
            self.constant_images.append(name)

    def warnings(self) -> list[str]:
        """One line per kind of suspicious content found, naming the slices."""
        lines = []
        if self.large_masks:
            lines.append(
                f"{len(self.large_masks)} of {self.count} mask(s) cover more than "
                f"{self.max_mask_fraction:.0%} of their image, more than a tumor does: "
                f"{first_few(self.large_masks)}; if they mark the background instead of the "
                "tumor, invert them (tumor non-zero, background 0)"
            )
        if self.constant_images and len(self.constant_images) == self.count:
            lines.append(
                f"all {self.count} images are constant (e.g. all zero): the images hold no "
                "signal; re-export them with their intensities (e.g. 16-bit scans scaled to "
                "8 bits, not clipped)"
            )
        elif self.constant_images:
            lines.append(
                f"{len(self.constant_images)} of {self.count} image(s) are constant, without "
                f"signal: {first_few(self.constant_images)}; re-export or remove them"
            )
        return lines


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
            f"{name}: mask is not binary (values {shown}); save masks with values 0/255, 0/1 "
            "or 0/65535 (16-bit), resampled with nearest neighbour"
        ]
    return []


def is_binary(values: np.ndarray) -> bool:
    """True when the unique mask values are a subset of {0, 1}, {0, 255} or {0, 65535}."""
    allowed = ({0, 1}, {0, 255}, {0, 65535})
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
