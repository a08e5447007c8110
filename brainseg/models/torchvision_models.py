"""Networks of torchvision's segmentation models (DeepLabV3, LR-ASPP, FCN)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from brainseg.models.backbone import download_imagenet_weights, load_weights_file
from brainseg.models.base import IMAGENET_STATS, SegmentationNetwork
from brainseg.models.weights import load_encoder_state

# Each builder's backbone and its output stride (torchvision dilates the last stages).
ARCHS = {
    "deeplabv3_resnet50": ("resnet50", 8),
    "deeplabv3_resnet101": ("resnet101", 8),
    "deeplabv3_mobilenet_v3_large": ("mobilenet_v3_large", 16),
    "lraspp_mobilenet_v3_large": ("mobilenet_v3_large", 16),
    "fcn_resnet50": ("resnet50", 8),
    "fcn_resnet101": ("resnet101", 8),
}


class TorchvisionSegmentation(SegmentationNetwork):
    """A torchvision segmentation model (`torchvision.models.get_model(arch)`) with one output
    class, no auxiliary head and no weights; `load_pretrained` loads the ImageNet weights of its
    backbone that torchvision's builder names (its segmentation weights are for 21 other
    classes), from torchvision's cache or a local classification checkpoint.

    Input: ImageNet-normalised images when those weights are loaded (`input_stats`), 1
    channel (the first convolution rebuilt, RGB kernels summed) or 3.

    Args:
        arch: one of `ARCHS` (``deeplabv3_resnet50``, ``lraspp_mobilenet_v3_large``, ...).
        in_channels: image channels.
        pretrained: load the ImageNet backbone weights now (the framework calls
            `load_pretrained` itself and leaves this off).
        weights_path: a local torchvision state dict of the backbone to load now instead.
    """

    pretrained_weights = "ImageNet backbone (torchvision)"

    def __init__(
        self,
        arch: str = "deeplabv3_resnet50",
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
        backbone, stride = ARCHS[arch]
        super().__init__(in_channels, multiple=stride)
        self.arch = arch
        self.model = torchvision.models.get_model(
            arch, weights=None, weights_backbone=None, num_classes=1
        )
        if in_channels != 3:
            _replace_first_conv(self.model.backbone, in_channels)
        if pretrained or weights_path is not None:
            self.load_pretrained(weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]  # (B, 1, H, W), upsampled to the input's size

    def load_pretrained(self, path: str | Path | None = None) -> None:
        """The backbone's ImageNet weights (torch hub cache, else downloaded), or those of a
        torchvision classification state dict in `path` (`resnet50.pth`, ...)."""
        if path is None:
            weights = self._imagenet_weights()
            state = download_imagenet_weights(ARCHS[self.arch][0], weights)
            source = f"torchvision {weights} ImageNet weights"
        else:
            state, source = load_weights_file(path), str(path)
        # A MobileNet's features are the backbone itself; a ResNet's layers keep their names.
        load_encoder_state(self.model.backbone, state, source, strip=("features.",))
        self.input_stats = IMAGENET_STATS

    def _imagenet_weights(self) -> WeightsEnum:
        """The backbone weights the builder uses by default (e.g. ResNet-50's IMAGENET1K_V1)."""
        builder = torchvision.models.get_model_builder(self.arch)
        return inspect.signature(builder).parameters["weights_backbone"].default


def _replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """Rebuilds the first convolution of `module` for `in_channels` inputs."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        bias=child.bias is not None,
                    ),
                )
                return
