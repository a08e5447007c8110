"""Convert a source once into uint8 arrays at the training size; load them fast.

Intensity: integer or float slices (e.g. the int16 .mat images) are scaled per slice with
min-max to 0..255, the way the common PNG conversions of the figshare set were made, so the
.mat and PNG copies give the same cache; uint8 slices are taken as they are. Size: images are
resized with area interpolation when shrinking and bilinear when growing; masks with nearest
neighbour, then binarised (> 0). Non-square slices are stretched to the square training size,
as the study did.

The cache is one uncompressed .npz named by a hash of (source cache key, image size, format
version). It is written under a temporary name and renamed into place, so a conversion cut
off halfway leaves no file that a later run takes for complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from brainseg.atomic import atomic_path
from brainseg.data.sources import Source

FORMAT_VERSION = 1
KEYS = ("images", "masks", "ids", "pids", "labels", "folds", "info")


@dataclass
class CachedData:
    """A whole data set in memory: images and masks uint8 (N, H, W), masks in {0, 1}.

    `folds` holds the patient-wise fold (1..5) per slice, 0 where unknown.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: np.ndarray
    pids: np.ndarray
    labels: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def cache_path(source: Source, image_size: int, cache_dir: str | os.PathLike) -> Path:
    """Where the cache of `source` at `image_size` lives."""
    key = f"{source.cache_key()}|{image_size}|v{FORMAT_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{type(source).__name__.lower()}-{image_size}-{digest}.npz"


def build_cache(source: Source, image_size: int, cache_dir: str | os.PathLike) -> Path:
    """Convert `source` into a cache at `image_size` unless that cache exists; return its path."""
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small: use e.g. 256 (the study's size)")
    path = cache_path(source, image_size, cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _convert(source, image_size)
    arrays["info"] = np.array(
        json.dumps(
            {"cache_key": source.cache_key(), "image_size": image_size, "version": FORMAT_VERSION}
        )
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def _convert(source: Source, size: int) -> dict[str, np.ndarray]:
    n = len(source)
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    ids, pids, labels = [], [], []
    count = 0
    for i, sample in enumerate(
        tqdm(source, total=n, desc=f"caching at {size}x{size}", unit="slice")
    ):
        if i >= n:
            raise RuntimeError(f"{type(source).__name__} yielded more slices than its length {n}")
        images[i] = to_cached(sample.image, size)
        masks[i] = resize_mask(sample.mask, size)
        ids.append(str(sample.meta["id"]))
        pids.append(str(sample.meta.get("pid", "")))
        labels.append(int(sample.meta.get("label", 0)))
        count = i + 1
    if count != n:
        raise RuntimeError(f"{type(source).__name__} yielded {count} slices but its length is {n}")
    if len(set(ids)) != n:
        raise ValueError(f"{type(source).__name__} has duplicate slice ids: make ids unique")
    folds = source.folds() or {}
    return {
        "images": images,
        "masks": masks,
        "ids": np.array(ids, dtype=str),
        "pids": np.array(pids, dtype=str),
        "labels": np.array(labels, dtype=np.int64),
        "folds": np.array([folds.get(i, 0) for i in ids], dtype=np.int64),
    }


def load_cache(path: str | os.PathLike) -> CachedData:
    """Load a cache written by `build_cache` into memory."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data.files]
            if missing:
                raise ValueError(f"lacks {', '.join(missing)}")
            info = json.loads(str(data["info"]))
            if info.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {info.get('version')}, expected {FORMAT_VERSION}")
            arrays = {k: data[k] for k in KEYS if k != "info"}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"cache {path} is unreadable ({error}): delete it, and the next run builds it "
            "again from the same data settings"
        ) from error
    return CachedData(**arrays)


def to_cached(image: np.ndarray, size: int) -> np.ndarray:
    """A raw (H, W) slice as the cache holds it: uint8 (`to_uint8`), resized to `size`²."""
    return resize_image(to_uint8(image), size)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Per-slice min-max scaling to 0..255 (uint8 input is returned unchanged)."""
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.round((image - low) * (255.0 / (high - low))).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Area interpolation to shrink (no aliasing), bilinear to grow."""
    if image.shape == (size, size):
        return image
    shrink = image.shape[0] * image.shape[1] > size * size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour, then binarised to {0, 1}."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.shape != (size, size):
        binary = cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    return binary
