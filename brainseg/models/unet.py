"""U-Net (Ronneberger et al., 2015) as the study describes it."""

from collections.abc import Sequence

import torch
from torch import nn

from brainseg.models.base import SegmentationNetwork
from brainseg.models.input_size import check_channels, check_input_size

DROPOUT_PLACES = ("encoder", "bridge", "decoder")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv + BN + ReLU, then optional channel-wise dropout.

    The convolutions have no bias: the BatchNorm right after them has its own.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """2x2 transposed conv (halves the channels), concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C/2, 2h, 2w)
        return self.conv(torch.cat([skip, x], dim=1))  # (B, C/2, 2h, 2w)


class UNet(SegmentationNetwork):
    """U-Net returning one logit per pixel.

    Encoder blocks have widths ``base_width * 2**i`` (64-128-256-512 by default), each followed
    by a 2x2 max-pool; the bridge doubles the width again (1024); each decoder block upsamples
    with a 2x2 transposed conv, concatenates the encoder skip and applies two 3x3 convs.

    Args:
        in_channels: image channels (1 or 3).
        base_width: width of the first encoder block.
        depth: number of encoder (and decoder) blocks.
        dropout: probability of the channel-wise dropout (``nn.Dropout2d``) at the end of each
            block named in ``dropout_at``.
        dropout_at: any of ``"encoder"``, ``"bridge"``, ``"decoder"``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_width: int = 64,
        depth: int = 4,
        dropout: float = 0.1,
        dropout_at: Sequence[str] = ("bridge", "decoder"),
    ) -> None:
        super().__init__(in_channels, multiple=max(32, 2**depth))
        dropout_at = tuple(dropout_at)
        unknown = set(dropout_at) - set(DROPOUT_PLACES)
        if unknown:
            raise ValueError(
                f"unknown dropout_at {sorted(unknown)}; choose from {list(DROPOUT_PLACES)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if depth < 1 or base_width < 1:
            raise ValueError(f"depth={depth} and base_width={base_width} must be positive")

        def p(place: str) -> float:
            return dropout if place in dropout_at else 0.0

        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            DoubleConv(c_in, c_out, p("encoder"))
            for c_in, c_out in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
        )
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bridge = DoubleConv(widths[-2], widths[-1], p("bridge"))
        self.decoder = nn.ModuleList(
            Up(c_in, c_out, p("decoder"))
            for c_in, c_out in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.head = nn.Conv2d(base_width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.multiple)
        check_channels(x, self.in_channels)
        skips = []
        for block in self.encoder:
            x = block(x)  # (B, w * 2**i, H / 2**i, W / 2**i)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)  # (B, w * 2**depth, H / 2**depth, W / 2**depth)
        for up, skip in zip(self.decoder, reversed(skips), strict=True):
            x = up(x, skip)
        return self.head(x)  # (B, 1, H, W)
