"""What brainseg needs of a network, written once: `SegmentationNetwork`.

Every network the framework trains subclasses it (the study's two, and the wrappers of
segmentation_models_pytorch, torchvision and MONAI) and so states, in one place:

- `in_channels` and `out_channels`: it maps (B, in_channels, H, W) to logits
  (B, out_channels, H, W), no activation inside; brainseg segments one class, out_channels=1;
- `multiple`: H and W must be multiples of it (the network's total downsampling);
- `pretrained_weights`: which published weights `load_pretrained()` fetches, or None when the
  family has none; `load_pretrained(path)` loads them from a local file instead, offline;
- `input_stats`: the normalisation (mean, std per channel) its loaded weights expect, None
  when any normalised input does (random initialisation, or weights of no fixed statistics);
- its cost: `count_flops(net, size)`.

Construction never loads weights, so rebuilding a network from a checkpoint never downloads
anything: the framework builds it, then either calls `load_pretrained` (a new run) or loads
the checkpoint's state dict (`brainseg.models.registry.build_network`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainseg.models.input_size import check_image_size

# The statistics of ImageNet-trained encoders, RGB in [0, 1] (torchvision, smp, timm).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_STATS = (IMAGENET_MEAN, IMAGENET_STD)


class SegmentationNetwork(nn.Module):
    """Base class of brainseg's networks: the contract above, checked where it can be.

    Args:
        in_channels: image channels (1: grey; 3: grey replicated, as ImageNet encoders take).
        multiple: H and W of the input must divide by it.
        out_channels: logit channels; 1 for brainseg's binary masks.
    """

    # Which published weights `load_pretrained()` fetches (shown by `brainseg-models list`);
    # None: the family has none, and `pretrained=true` leaves it randomly initialised.
    pretrained_weights: ClassVar[str | None] = None

    def __init__(self, in_channels: int, multiple: int, out_channels: int = 1) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or multiple < 1:
            raise ValueError(
                f"in_channels={in_channels}, out_channels={out_channels} and "
                f"multiple={multiple} must be positive"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.multiple = int(multiple)
        self.input_stats: tuple[Sequence[float], Sequence[float]] | None = None

    def load_pretrained(self, path: str | Path | None = None) -> None:
        """Loads the family's published weights: from `path` (a local file, offline) when
        given, else from the library (its download cache, or the internet). Sets
        `input_stats` to the normalisation they expect.

        Raises:
            ValueError: when the family has no published weights.
        """
        raise ValueError(
            f"{type(self).__name__} has no pretrained weights; set pretrained=false "
            "(and model.weights_path=null) for this model"
        )


def count_flops(net: nn.Module, size: int, in_channels: int | None = None) -> int:
    """FLOPs of one forward pass of one `size`x`size` image (a multiply-add counts as 2), by
    `torch.utils.flop_counter.FlopCounterMode` on a float32 CPU copy in eval mode, so the
    network itself keeps its device, dtype and mode.

    Args:
        net: the network; a `SegmentationNetwork` gives its own `in_channels`.
        size: the image side.
        in_channels: the input channels of a network that does not state them.
    """
    channels = in_channels
    if channels is None and isinstance(net, SegmentationNetwork):
        channels = net.in_channels
    if channels is None:
        raise ValueError(f"give in_channels: {type(net).__name__} does not state its own")
    copied = copy.deepcopy(net).cpu().float().eval()
    x = torch.zeros(1, channels, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        copied(x)
    return counter.get_total_flops()


def per_channel(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """`values` (a data.mean or data.std) as one value per channel, by the data pipeline's rule:
    one value is repeated; three values for one channel are averaged (a grey image)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"{len(values)} values for {channels} channels: give 1 or {channels}")


def check_data_fits(
    net: SegmentationNetwork,
    model: str,
    image_size: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """Raises a ValueError naming the setting to change unless the data (`data.image_size`,
    `data.in_channels`, `data.mean`, `data.std`) is what network `model` takes."""
    if not isinstance(net, SegmentationNetwork):
        raise TypeError(
            f"model {model} builds a {type(net).__name__}, not a "
            "brainseg.models.SegmentationNetwork: subclass it (docs/training.md, 'Adding a "
            "network')"
        )
    check_image_size(image_size, net.multiple, model)
    if in_channels != net.in_channels:
        raise ValueError(
            f"data.in_channels={in_channels} but model {model} was built for "
            f"{net.in_channels} channels; set model.in_channels=${{data.in_channels}}"
        )
    if net.input_stats is None:
        return
    want_mean, want_std = (per_channel(v, in_channels) for v in net.input_stats)
    got_mean, got_std = per_channel(mean, in_channels), per_channel(std, in_channels)
    close = all(
        abs(a - b) < 1e-4 for a, b in zip(want_mean + want_std, got_mean + got_std, strict=True)
    )
    if not close:
        raise ValueError(
            f"model {model}'s pretrained weights expect inputs normalised with mean "
            f"{list(net.input_stats[0])} and std {list(net.input_stats[1])}, but data.mean="
            f"{list(mean)} and data.std={list(std)}; set those (the defaults), or "
            "pretrained=false"
        )
