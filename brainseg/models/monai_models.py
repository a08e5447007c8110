"""Networks of MONAI in 2D: nnU-Net's U-Net (DynUNet), Attention U-Net and SwinUNETR.

MONAI publishes no ImageNet weights for them: they train from random initialisation, on any
normalised input (`pretrained=true` leaves them as they are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import AttentionUnet, DynUNet, SwinUNETR

from brainseg.models.base import SegmentationNetwork


def nnunet_plan(
    image_size: int, base_features: int = 32, max_features: int = 512, min_feature_map: int = 4
) -> tuple[list[int], list[int]]:
    """nnU-Net's 2D topology for a square patch of `image_size` at isotropic spacing: halve
    the size while the result stays at least `min_feature_map` pixels, 3x3 kernels at every
    stage, features doubling from `base_features` up to `max_features` (nnU-Net's
    ``get_pool_and_conv_props`` and 2D defaults: 4, 32, 512).

    Returns:
        The features of each stage and each stage's stride (1 for the first, then 2).
    """
    if image_size < 2 * min_feature_map:
        raise ValueError(
            f"image_size={image_size} leaves no stage of at least {min_feature_map} pixels to "
            f"pool to; use data.image_size >= {2 * min_feature_map}"
        )
    pools = int(math.floor(math.log2(image_size / min_feature_map)))
    features = [min(base_features * 2**i, max_features) for i in range(pools + 1)]
    return features, [1] + [2] * pools


class NnUNet2D(SegmentationNetwork):
    """MONAI's DynUNet configured as nnU-Net's 2D network for `image_size` (`nnunet_plan`):
    two 3x3 conv + instance norm + leaky ReLU per stage, strided convs down, transposed convs
    up. Without deep supervision: brainseg's loss takes the full-size logits only (nnU-Net's
    training recipe adds the lower stages' outputs).

    Args:
        in_channels: image channels.
        image_size: the training size the topology is planned for (``${data.image_size}``).
        base_features: features of the first stage.
        max_features: the cap on any stage's features.
        min_feature_map: the smallest side a stage may pool to.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 256,
        base_features: int = 32,
        max_features: int = 512,
        min_feature_map: int = 4,
    ) -> None:
        features, strides = nnunet_plan(image_size, base_features, max_features, min_feature_map)
        super().__init__(in_channels, multiple=2 ** (len(strides) - 1))
        self.model = DynUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            kernel_size=[3] * len(strides),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=features,
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, 1, H, W)


class AttentionUNet(SegmentationNetwork):
    """MONAI's Attention U-Net (Oktay et al., 2018) in 2D.

    Args:
        in_channels: image channels.
        channels: features of each stage, the first at full size.
        dropout: dropout probability in every block.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.0,
    ) -> None:
        strides = [2] * (len(channels) - 1)
        super().__init__(in_channels, multiple=2 ** len(strides))
        self.model = AttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            channels=list(channels),
            strides=strides,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, 1, H, W)


class SwinUNETR2D(SegmentationNetwork):
    """MONAI's SwinUNETR (Hatamizadeh et al., 2022) in 2D: a Swin transformer encoder (four
    stages of shifted-window attention, patch size 2) and a convolutional U-Net decoder.

    Args:
        in_channels: image channels.
        feature_size: the embedding width of the first stage (a multiple of 12).
        depths: transformer blocks per stage.
        num_heads: attention heads per stage.
        window_size: the attention window's side.
    """

    def __init__(
        self,
        in_channels: int = 3,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
    ) -> None:
        super().__init__(in_channels, multiple=32)  # patch 2, then four halvings
        self.model = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            spatial_dims=2,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, 1, H, W)
