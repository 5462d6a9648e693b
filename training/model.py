"""Architecture of the example model: two conv layers and two fully connected layers for 1x8x8 digits."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, conv_channels: tuple[int, int] = (16, 32), hidden: int = 64, nb_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 4 * 4, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, nb_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.features(x)))


def build_model(hyperparameters: dict[str, Any]) -> nn.Module:
    return DigitsCNN(
        conv_channels=tuple(hyperparameters.get("conv_channels", (16, 32))),
        hidden=int(hyperparameters.get("hidden", 64)),
        nb_classes=int(hyperparameters.get("nb_classes", 10)),
    )
