"""Training augmentation of whole batches on the model's device (`data.augment_on=device`).

The loader then only stacks uint8 slices: no per-sample work in the workers and 12x fewer bytes
to copy to the GPU than normalised float32 RGB. The same augmentations as the albumentations
pipeline (`brainseg.data.transforms`), with the same settings and order: flips, an affine warp
(bilinear for the image, nearest for the mask, zero fill) and brightness/contrast on the
[0, 1] grey image, then replication to `in_channels` and normalisation.

Random parameters are drawn on the CPU, in the main process, from a generator the caller
passes (the data module seeds one per batch from the seeds of its slices, which depend on the
run's seed, the epoch and the slice: see `brainseg.data.sampler`): a run is reproducible and
resumable exactly, DDP processes (which load different slices) augment differently, and a GPU
never has to hand random numbers back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from brainseg.data.transforms import check_augment, per_channel


class BatchAugment:
    """uint8 image and mask batches (B, 1, H, W) -> image float32 (B, C, H, W), mask (B, 1, H, W).

    Args:
        augment_cfg: as for `build_transforms` (hflip, vflip, affine, brightness_contrast).
        in_channels: 3 to replicate the grey slice, or 1.
        mean, std: per channel normalisation after scaling to [0, 1].
    """

    def __init__(
        self,
        augment_cfg: Mapping | None,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        cfg = check_augment(augment_cfg or {})
        self.hflip = float(cfg.get("hflip", 0))
        self.vflip = float(cfg.get("vflip", 0))
        affine = cfg.get("affine") or {}
        self.affine_p = float(affine.get("p", 0))
        self.rotate, self.scale, self.shift = (
            float(affine.get(k, 0)) for k in ("rotate", "scale", "shift")
        )
        bc = cfg.get("brightness_contrast") or {}
        self.bc_p = float(bc.get("p", 0))
        self.brightness = float(bc.get("brightness", 0))
        self.contrast = float(bc.get("contrast", 0))
        self.in_channels = in_channels
        self.mean = torch.from_numpy(per_channel(mean, in_channels, "mean"))
        self.std = torch.from_numpy(per_channel(std, in_channels, "std"))
        # Copied to each device once, not every batch (a host-to-device copy per step).
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        augment: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment (unless `augment` is false) and normalise; random draws from `generator`
        (torch's global CPU generator when None)."""
        if image.dtype != torch.uint8 or image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(
                f"BatchAugment takes uint8 grey batches (B, 1, H, W), got {image.dtype} "
                f"{tuple(image.shape)}: set data.augment_on=device on the data module that "
                "makes them"
            )
        x = image.float().div_(255.0)
        y = mask.float()
        if augment:
            x, y = self.augment(x, y, generator)
        mean, std = self._statistics(x.device)
        x = (x.expand(-1, self.in_channels, -1, -1) - mean) / std
        return x.contiguous(), (y > 0.5).float()

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalisation's mean and std on `device`."""
        if device not in self._on_device:
            self._on_device[device] = (self.mean.to(device), self.std.to(device))
        return self._on_device[device]

    def augment(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment float [0, 1] images and {0, 1} masks (B, 1, H, W)."""
        n, g = x.shape[0], generator
        if self.hflip:
            x, y = _where(_coin(n, self.hflip, x, g), (x.flip(-1), y.flip(-1)), (x, y))
        if self.vflip:
            x, y = _where(_coin(n, self.vflip, x, g), (x.flip(-2), y.flip(-2)), (x, y))
        if self.affine_p:
            theta = self.sample_affine(n, g).to(x.device, non_blocking=True)
            warped = warp(x, y, theta)
            x, y = _where(_coin(n, self.affine_p, x, g), warped, (x, y))
        if self.bc_p:
            alpha = 1 + _uniform(n, self.contrast, g)
            beta = _uniform(n, self.brightness, g)
            on = torch.rand(n, generator=g) < self.bc_p
            alpha, beta = torch.where(on, alpha, 1.0), torch.where(on, beta, 0.0)
            alpha, beta = (
                v.to(x.device, non_blocking=True).view(n, 1, 1, 1) for v in (alpha, beta)
            )
            x = (x * alpha + beta).clamp_(0.0, 1.0)
        return x, y

    def sample_affine(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2, 3) sampling matrices of random rotations, scalings and shifts (CPU)."""
        # x and y scales apart, as albumentations' Affine draws them (keep_ratio=False).
        angle = _uniform(n, self.rotate, generator)
        scale = 1 + torch.stack(
            [_uniform(n, self.scale, generator), _uniform(n, self.scale, generator)], dim=1
        )
        shift = torch.stack(
            [_uniform(n, self.shift, generator), _uniform(n, self.shift, generator)], dim=1
        )
        return affine_matrices(angle, scale, shift)


def affine_matrices(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sampling matrices for `F.affine_grid` of square images, with albumentations' conventions.

    Args:
        angle: (n,) degrees, positive counter-clockwise as the image is displayed.
        scale: (n, 2) zoom factors along x and y, about the centre.
        shift: (n, 2) translations (x right, y down) as fractions of the side; albumentations
            truncates them to whole pixels, this keeps them exact.

    The warp moves the content by p -> R(angle) S p + shift, S = diag(scale); `affine_grid` needs
    where each output pixel samples from, the inverse, in coordinates from -1 to 1 (a side spans
    2).
    """
    rad = angle.double() * math.pi / 180
    cos, sin = torch.cos(rad), torch.sin(rad)
    # With y pointing down, a counter-clockwise turn on screen is [[cos, sin], [-sin, cos]];
    # S^-1 R^-1 (dividing the rows of the inverse turn by the scales) maps output points back.
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    inv = inv / scale.double().unsqueeze(-1)
    offset = -(inv @ (2 * shift.double()).unsqueeze(-1))
    return torch.cat([inv, offset], dim=-1).float()


def warp(
    x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images (bilinear) and masks (nearest) by sampling matrices `theta`; zero outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, y


def _uniform(n: int, limit: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * limit


def _coin(n: int, p: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    on = torch.rand(n, generator=generator) < p
    return on.to(like.device, non_blocking=True).view(n, 1, 1, 1)


def _where(
    on: torch.Tensor, new: tuple[torch.Tensor, torch.Tensor], old: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.where(on, new[0], old[0]), torch.where(on, new[1], old[1])
