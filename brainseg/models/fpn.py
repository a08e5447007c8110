"""SemanticFPN: ResNet + FPN + the semantic head of Panoptic FPN (Kirillov et al., 2019)."""

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from brainseg.models.backbone import (
    adapt_first_conv,
    download_imagenet_weights,
    load_resnet_state,
    load_weights_file,
    resnet_features,
)
from brainseg.models.base import IMAGENET_STATS, SegmentationNetwork
from brainseg.models.input_size import check_channels, check_input_size

FUSES = ("conv1x1", "conv3x3x2")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SemanticHead(nn.Module):
    """P3..P5 upsampled to P2's size (nearest), concatenated, fused, dropout, 1x1 to a logit.

    Args:
        channels: channels of each pyramid level.
        fuse: ``"conv1x1"`` (one 1x1 conv + BN + ReLU, 4C -> C; the study's section 6.3) or
            ``"conv3x3x2"`` (two 3x3 conv + BN + ReLU, 4C -> C -> C; its section 6, step 4).
        dropout: probability of the channel-wise dropout before the classifier.
    """

    def __init__(self, channels: int = 256, fuse: str = "conv1x1", dropout: float = 0.1) -> None:
        super().__init__()
        if fuse not in FUSES:
            raise ValueError(f"unknown fuse {fuse!r}; choose one of {list(FUSES)}")
        if fuse == "conv1x1":
            layers = conv_bn_relu(4 * channels, channels, 1)
        else:
            layers = conv_bn_relu(4 * channels, channels, 3) + conv_bn_relu(channels, channels, 3)
        self.fuse = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, 1, 1)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        p2, p3, p4, p5 = pyramid
        size = p2.shape[-2:]
        up = [F.interpolate(p, size=size, mode="nearest") for p in (p3, p4, p5)]
        x = torch.cat([p2, *up], dim=1)  # (B, 4C, H/4, W/4)
        x = self.dropout(self.fuse(x))  # (B, C, H/4, W/4)
        return self.classifier(x)  # (B, 1, H/4, W/4)


class SemanticFPN(SegmentationNetwork):
    """ResNet backbone, FPN neck (P2..P5, no P6) and semantic head; returns logits (B, 1, H, W).

    Args:
        backbone: torchvision ResNet name (``resnet18/34/50/101/152``).
        in_channels: image channels (1 or 3).
        pretrained: load the backbone's ImageNet weights now (`load_pretrained`; the
            framework calls it itself and leaves this off).
        weights_path: a local torchvision ResNet state dict to load now instead.
        fpn_channels: channels of the lateral convs and of P2..P5.
        fuse: head fusion, ``"conv1x1"`` (default) or ``"conv3x3x2"``.
        dropout: dropout probability in the head.
    """

    pretrained_weights = "ImageNet ResNet (torchvision)"

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        fpn_channels: int = 256,
        fuse: str = "conv1x1",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, multiple=32)  # the sides must divide by C5's stride
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.backbone_name = backbone
        self.backbone, channels = resnet_features(backbone, in_channels, pretrained=False)
        # Lateral 1x1 convs, nearest top-down upsampling to the lateral's size, addition and a
        # 3x3 smoothing conv per level; extra_blocks=None leaves out P6.
        self.neck = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=None)
        self.head = SemanticHead(fpn_channels, fuse, dropout)
        if pretrained or weights_path is not None:
            self.load_pretrained(weights_path)

    def load_pretrained(self, path: str | Path | None = None) -> None:
        """torchvision's ImageNet weights of the ResNet (torch hub cache, else downloaded), or
        the local ResNet state dict in `path` (see `backbone.load_weights_file` for the
        accepted layouts); RGB kernels are fitted to `in_channels`."""
        if path is None:
            state = download_imagenet_weights(self.backbone_name)
            source = f"torchvision {self.backbone_name} ImageNet weights"
        else:
            state, source = load_weights_file(path), str(path)
        load_resnet_state(self.backbone, adapt_first_conv(state, self.in_channels), source)
        self.input_stats = IMAGENET_STATS

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """P2..P5, each ``fpn_channels`` wide, at strides 4, 8, 16 and 32."""
        check_input_size(x, self.multiple)
        check_channels(x, self.in_channels)
        features = self.backbone(x)
        c2, c3, c4, c5 = features["c2"], features["c3"], features["c4"], features["c5"]
        # c2: (B, 256, H/4, W/4) ... c5: (B, 2048, H/32, W/32) for ResNet-50
        p = self.neck(OrderedDict(p2=c2, p3=c3, p4=c4, p5=c5))
        return [p["p2"], p["p3"], p["p4"], p["p5"]]  # (B, 256, H/4 .. H/32, W/4 .. W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        logits = self.head(self.pyramid(x))  # (B, 1, H/4, W/4)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
