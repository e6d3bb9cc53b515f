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
    """LeNet-5 with ReLU and max-pooling: conv 6@5x5 (pad 2), pool, conv 16@5x5, pool, 120-84-10."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28
    ) -> None:
        super().__init__()
        h, w = _side(image_size)
        h, w = (h // 2 - 4) // 2, (w // 2 - 4) // 2  # spatial size after the second pool
        if h < 1 or w < 1:
            raise ValueError(f"lenet5 needs images of at least 12x12, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # [N, 6, 14, 14]
        x = self.pool(self.relu(self.conv2(x)))  # [N, 16, 5, 5]
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def lenet300(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet300:
    """LeNet-300-100 (266k parameters at 28x28)."""
    return LeNet300(num_classes, in_channels, image_size)


def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet5:
    """LeNet-5 (62k parameters at 28x28)."""
    return LeNet5(num_classes, in_channels, image_size)
