"""Small 2-D CNN classifier for tiny images (e.g. 1x8x8 digits)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn as nn


class ConvBlock(nn.Sequential):
    """Conv2d(3x3) -> BatchNorm -> ReLU -> MaxPool(2): doubles features, halves resolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),  # BN supplies the bias
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )


class CustomCNN(nn.Module):
    """Conv blocks -> flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(classes).

    Args:
        in_channels: Image channels ``C``.
        num_classes: Number of output logits.
        image_size: Side length ``H == W`` of the (square) input images.
        channels: Output width of each conv block; each block halves the resolution.
        hidden: Width of the hidden fully-connected layer.
        dropout: Dropout before the classification layer.

    Shapes: input ``(B, C, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]  # Hydra hands over a ListConfig
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        if image_size < 2 ** len(channels):
            raise ValueError(
                f"image_size={image_size} is too small for {len(channels)} pooling stages "
                f"(needs >= {2 ** len(channels)})"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size

        widths = [in_channels, *channels]
        self.features = nn.Sequential(*(ConvBlock(w_in, w_out) for w_in, w_out in pairwise(widths)))
        side = image_size
        for _ in channels:
            side //= 2  # MaxPool2d(2) floors odd sizes
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))
