"""Connected components of binary masks: scipy on the host, or label propagation in torch that
stays on the device. Both number components identically (scipy's raster order)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

_METHODS = ("auto", "scipy", "torch")


def check_connectivity(connectivity: int) -> None:
    """Raise a ValueError naming ``connectivity`` unless it is 4 or 8."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def check_method(method: str) -> None:
    """Raise a ValueError naming ``method`` unless it is one of ``label_components``'."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def label_components(
    mask: Tensor, connectivity: int = 8, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Label the connected components of each image of a batch of binary masks.

    Both methods give identical labels: 0 for background and 1..num per image, numbered in
    raster order of each component's first pixel (scipy's order).

    Args:
        mask: bool (B, H, W).
        connectivity: 8 (diagonal neighbours join) or 4.
        method: "scipy" (on the host, fast on CPU), "torch" (label propagation with max-pooling,
            stays on the device) or "auto" (torch on CUDA, scipy otherwise).

    Returns:
        labels int64 (B, H, W) and the number of components per image, int64 (B,).
    """
    check_connectivity(connectivity)
    check_method(method)
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape (B, H, W), got {tuple(mask.shape)}")
    mask = mask.bool()
    if method == "auto":
        method = "scipy" if mask.device.type == "cpu" else "torch"
    if method == "scipy":
        return _label_scipy(mask, connectivity)
    return _label_torch(mask, connectivity)


def _label_scipy(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    # One ndimage.label call for the whole batch: a 3-D structure whose batch axis has no
    # neighbours keeps images apart, and labels come out in raster order, image after image.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, _ = ndimage.label(mask.detach().cpu().numpy(), structure=structure)
    labels = torch.from_numpy(labels.astype(np.int64)).to(mask.device)  # (B, H, W)
    last = labels.flatten(1).amax(1)  # highest global label in each image (0 if empty)
    offset = torch.cat([last.new_zeros(1), last.cummax(0).values[:-1]])
    local = torch.where(labels > 0, labels - offset.view(-1, 1, 1), 0)
    return local, (last - offset).clamp_min(0)


def _neighbour_max(values: Tensor, connectivity: int) -> Tensor:
    if connectivity == 8:
        return F.max_pool2d(values, 3, stride=1, padding=1)
    vertical = F.max_pool2d(values, (3, 1), stride=1, padding=(1, 0))
    horizontal = F.max_pool2d(values, (1, 3), stride=1, padding=(0, 1))
    return torch.maximum(vertical, horizontal)


def _label_torch(mask: Tensor, connectivity: int, check_every: int = 4) -> tuple[Tensor, Tensor]:
    batch, height, width = mask.shape
    n = height * width
    # max_pool2d needs floating point; float32 holds pixel indices exactly below 2**24.
    dtype = torch.float32 if n < 2**24 else torch.float64
    fg = mask.unsqueeze(1).to(dtype)  # (B, 1, H, W)
    index = torch.arange(n, device=mask.device).view(1, 1, height, width)
    # Each foreground pixel starts with n - (its raster index): propagating the maximum spreads
    # the smallest raster index of the component, which makes the final ids match scipy's order.
    values = (n - index).to(dtype) * fg
    previous = values
    for step in range(1, n + 1):
        values = _neighbour_max(values, connectivity) * fg
        # Pointer jumping: a value names a pixel of the same component (the one that started
        # with it), whose own value is at least as large; taking it doubles the reach per step.
        source = (n - values.flatten(1)).long().clamp(0, n - 1)
        jumped = values.flatten(1).gather(1, source).view_as(values)
        values = torch.maximum(values, jumped) * fg
        if step % check_every == 0:  # the only host sync: once every few steps
            if torch.equal(values, previous):
                break
            previous = values
    source = (n - values.flatten(1)).long().clamp(0, n - 1)  # (B, n) component's first pixel
    roots = (source == index.view(1, n)) & mask.flatten(1)
    rank = roots.cumsum(1)  # consecutive ids 1..num in raster order of first pixels
    labels = rank.gather(1, source) * mask.flatten(1)
    return labels.view(batch, height, width), roots.sum(1)
