"""Albumentations pipelines: augmentation for training, normalisation for every stage; and
`SlicePreprocessor`, the one way from a raw slice to the network's input outside training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from brainseg.data.cache import to_cached

STAGES = ("train", "val", "test", "predict")
AUGMENTATIONS = ("hflip", "vflip", "affine", "brightness_contrast")


class SegmentationTransform:
    """uint8 (H, W) image and mask -> image float32 (C, H, W), mask float32 (1, H, W) in {0, 1}.

    The grey image is scaled to [0, 1], replicated to `in_channels` and normalised per
    channel with `mean` and `std`.
    """

    def __init__(
        self,
        augment: A.Compose | None,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        if in_channels not in (1, 3):
            raise ValueError(
                f"data.in_channels={in_channels} must be 1 (grey) or 3 (grey replicated)"
            )
        self.augment = augment
        self.in_channels = in_channels
        self.mean = per_channel(mean, in_channels, "mean")
        self.std = per_channel(std, in_channels, "std")
        if (self.std <= 0).any():
            raise ValueError(f"data.std={list(std)} must be positive")
        self._seeded_with: int | None = None

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment with `seed` (`EpochSampler` gives one per sample and epoch), or, without one,
        with a generator seeded once per process from torch's."""
        if self.augment is not None:
            self._reseed(seed)
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        y = (mask > 0).astype(np.float32)[None]  # (1, H, W)
        return self.normalize(image), torch.from_numpy(y)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W) -> float32 (C, H, W): scaled to [0, 1], replicated, normalised."""
        x = image.astype(np.float32) / 255.0
        x = (x[None] - self.mean) / self.std  # (C, H, W) by broadcasting the grey slice
        return torch.from_numpy(np.ascontiguousarray(x))

    def _reseed(self, seed: int | None) -> None:
        if seed is not None:
            self.augment.set_random_seed(seed)
            self._seeded_with = None
            return
        # Albumentations keeps its own generator, which forked workers would share; seed it
        # from torch's per-worker seed.
        seed = torch.initial_seed() % 2**32
        if seed != self._seeded_with:
            self.augment.set_random_seed(seed)
            self._seeded_with = seed


class SlicePreprocessor:
    """A raw slice, as a reader returns it (any size, any dtype), to the network's input: the
    cache's conversion (`to_cached`: uint8 by min-max, resized to `image_size`), then the
    evaluation transform. The data module's validation and test sets use this transform, and
    predict, the report's grids and the W&B media reach the network through it.
    """

    def __init__(
        self, image_size: int, in_channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.image_size = int(image_size)
        self.transform = build_transforms("test", None, in_channels, mean, std)

    @classmethod
    def from_config(cls, data: Mapping) -> SlicePreprocessor:
        """The preprocessing of a run's resolved `data` config (e.g. a checkpoint's)."""
        return cls(data["image_size"], data["in_channels"], data["mean"], data["std"])

    def cached(self, image: np.ndarray) -> np.ndarray:
        """The uint8 (image_size, image_size) slice, as the cache holds it."""
        return to_cached(image, self.image_size)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """float32 (C, image_size, image_size), as the test stage saw its slices."""
        return self.transform.normalize(self.cached(image))


def uint8_tensors(
    image: np.ndarray, mask: np.ndarray, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W) image and {0, 1} mask -> uint8 tensors (1, H, W), for `BatchAugment` (which
    draws its random numbers per batch, from the samples' `seed`s)."""
    return torch.from_numpy(image)[None], torch.from_numpy(mask)[None]


def build_transforms(
    stage: str,
    augment_cfg: Mapping | None,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> SegmentationTransform:
    """The transform of a stage: augmentation from `augment_cfg` for "train", none otherwise.

    Args:
        stage: "train", "val", "test" or "predict".
        augment_cfg: probabilities and ranges, e.g. {hflip: 0.5, vflip: 0.0, affine: {p, rotate
            (degrees), scale (fraction), shift (fraction of the side)}, brightness_contrast:
            {p, brightness, contrast}}; None or {} for no augmentation.
        in_channels: 3 to replicate the grey slice (ImageNet backbones) or 1.
        mean, std: per channel normalisation after scaling to [0, 1]; one value or one per
            channel (three values with in_channels=1 are averaged, as for a grey image).
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {', '.join(STAGES)}")
    augment = _augmentations(augment_cfg or {}) if stage == "train" else None
    return SegmentationTransform(augment, in_channels, mean, std)


def check_augment(cfg: Mapping) -> Mapping:
    """`cfg` itself, after checking that every key names a known augmentation."""
    unknown = set(cfg) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(
            f"unknown data.augment keys {sorted(unknown)}: use {', '.join(AUGMENTATIONS)}"
        )
    return cfg


def _augmentations(cfg: Mapping) -> A.Compose | None:
    check_augment(cfg)
    steps: list = []
    if cfg.get("hflip", 0):
        steps.append(A.HorizontalFlip(p=float(cfg["hflip"])))
    if cfg.get("vflip", 0):
        steps.append(A.VerticalFlip(p=float(cfg["vflip"])))
    affine = cfg.get("affine") or {}
    if affine.get("p", 0):
        rotate, scale, shift = (float(affine.get(k, 0)) for k in ("rotate", "scale", "shift"))
        steps.append(
            A.Affine(
                rotate=(-rotate, rotate),
                scale=(1 - scale, 1 + scale),
                translate_percent=(-shift, shift),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,  # masks stay binary
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=float(affine["p"]),
            )
        )
    bc = cfg.get("brightness_contrast") or {}
    if bc.get("p", 0):
        steps.append(
            A.RandomBrightnessContrast(
                brightness_limit=float(bc.get("brightness", 0)),
                contrast_limit=float(bc.get("contrast", 0)),
                p=float(bc["p"]),
            )
        )
    return A.Compose(steps) if steps else None


def per_channel(values: Sequence[float], channels: int, name: str) -> np.ndarray:
    """`values` (data.mean or data.std) as a float32 (channels, 1, 1) array."""
    array = np.asarray(list(values) if not np.isscalar(values) else [values], dtype=np.float32)
    if len(array) == 3 and channels == 1:
        array = array.mean(keepdims=True)
    if len(array) == 1:
        array = np.repeat(array, channels)
    if len(array) != channels:
        raise ValueError(
            f"data.{name} has {len(array)} values for in_channels={channels}: give 1 or {channels}"
        )
    return array.reshape(channels, 1, 1)
