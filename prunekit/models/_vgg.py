"""A small VGG-style network for 28x28 images (the default model of the built-in job)."""

from __future__ import annotations

import torch
from torch import nn

# Conv widths and where a 2x2 max-pool follows a conv: 28 -> 14 -> 7 -> 3. About 21.9M MACs at
# 1x1x28x28 (see tests/models), the cost the default job's pruning targets are quoted against.
WIDTHS = (32, 64, 128, 256, 512)
POOL_AFTER = (0, 1, 2)


class VGG(nn.Module):
    """Five conv3x3-BatchNorm-ReLU layers with max-pools in between, then a two-layer classifier.

    ``features`` holds the convolutions (indices as in torchvision's VGG), ``classifier`` the
    fully connected layers on the flattened [512 x 3 x 3] feature map.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        widths: tuple[int, ...] = WIDTHS,
        pool_after: tuple[int, ...] = POOL_AFTER,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        if side < 1:
            raise ValueError(
                f"vgg: image_size {image_size} is too small for {len(pool_after)} pools"
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [N, 512, 3, 3] at 28x28
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: float = 1.0
) -> VGG:
    """VGG-style CNN: widths 32-64-128-256-512, ~21.9M MACs and 2.75M parameters at 28x28.

    `width` scales every layer's channels (0.5: ~5.5M MACs, four times cheaper to train).
    """
    if width <= 0:
        raise ValueError(f"vgg: width must be positive, got {width}")
    widths = tuple(max(1, round(w * width)) for w in WIDTHS)
    return VGG(
        num_classes, in_channels, image_size, widths=widths, hidden=max(1, round(256 * width))
    )
