"""DS-CNN for keyword spotting on log-mel features (after Zhang et al. 2017, "Hello Edge")."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))


class DSBlock(nn.Module):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        )
        self.pointwise = _conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DSCNN(nn.Module):
    """A stem conv (5x5, stride 2), ``blocks`` depthwise-separable blocks (the first with stride
    2), global average pooling and a linear classifier.

    Input ``[N, in_channels, n_mels, frames]``; any size of at least 4x4 works.
    """

    def __init__(
        self, num_classes: int = 12, in_channels: int = 1, width: int = 64, blocks: int = 4
    ) -> None:
        super().__init__()
        if width < 1 or blocks < 1:
            raise ValueError(f"width and blocks must be >= 1, got {width} and {blocks}")
        self.stem = _conv_bn_relu(nn.Conv2d(in_channels, width, 5, 2, 2, bias=False))
        self.blocks = nn.Sequential(
            *(DSBlock(width, width, stride=2 if i == 0 else 1) for i in range(blocks))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # [N, width, n_mels / 4, frames / 4]
        return self.fc(torch.flatten(self.pool(x), 1))


def kws_dscnn(
    num_classes: int = 12, in_channels: int = 1, width: int = 64, blocks: int = 4
) -> DSCNN:
    """DS-CNN for ``keywords-synth`` ([1, 40, 101] log-mel): 22k parameters, 6.5M MACs."""
    return DSCNN(num_classes, in_channels, width, blocks)
