"""LeNet-300-100 and LeNet-5 for 28x28 single-channel images."""

from __future__ import annotations

import torch
from torch import nn


def _side(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)  # type: ignore[return-value]


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 multilayer perceptron with ReLU."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28
    ) -> None:
        super().__init__()
        h, w = _side(image_size)
        self.fc1 = nn.Linear(in_channels * h * w, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # [N, C*H*W]
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: conv, pool, conv, pool, then fully connected layers.

    The defaults are the classic 6@5x5 (pad 2), 16@5x5, 120-84-10; `lenet5_caffe` builds the wider
    variant of Caffe's MNIST example that Han et al. 2015 pruned (20, 50 channels, 500-10).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
        *,
        channels: tuple[int, int] = (6, 16),
        hidden: tuple[int, ...] = (120, 84),
        padding: int = 2,
    ) -> None:
        super().__init__()
        h, w = _side(image_size)
        # spatial size after conv1 (5x5, `padding`), pool, conv2 (5x5), pool
        h, w = ((h + 2 * padding - 4) // 2 - 4) // 2, ((w + 2 * padding - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            side = 16 - 2 * padding
            raise ValueError(f"lenet5 needs images of at least {side}x{side}, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=5, padding=padding)
        self.conv2 = nn.Conv2d(channels[0], channels[1], kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        widths = (channels[1] * h * w, *hidden, num_classes)
        for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(fan_in, fan_out))
        self.fcs = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # [N, c1, 14, 14] for the classic 28x28
        x = self.pool(self.relu(self.conv2(x)))  # [N, c2, 5, 5]
        x = torch.flatten(x, 1)
        for i in range(1, self.fcs):
            x = self.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.fcs}")(x)


def lenet300(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet300:
    """LeNet-300-100 (266k parameters at 28x28)."""
    return LeNet300(num_classes, in_channels, image_size)


def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet5:
    """LeNet-5 (62k parameters at 28x28)."""
    return LeNet5(num_classes, in_channels, image_size)


def lenet5_caffe(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet5:
    """LeNet-5 as in Caffe's MNIST example and Han et al. 2015 (431k parameters at 28x28): conv
    20@5x5, pool, conv 50@5x5, pool, 500-10, with ReLU after every hidden layer."""
    return LeNet5(num_classes, in_channels, image_size, channels=(20, 50), hidden=(500,), padding=0)
