"""VGG with BatchNorm (Simonyan & Zisserman 2015; ``vgg16_bn``) for small images.

Five stages of 3x3 Conv-BN-ReLU layers (VGG-16: 2, 2, 3, 3, 3 convs of 64, 128, 256, 512 and
512 channels, scaled by ``width``), a 2x2 max-pool after each stage while the feature map is
at least 2 pixels on its short side (so 8x8 digits pool three times, 32x32 images five), then
global average pooling and the classifier (hidden layers with dropout, then the logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tinyexp.models.blocks import ClassifierHead, ConvBNAct, image_hw, init_weights

STAGE_WIDTHS = (64, 128, 256, 512, 512)  # VGG's widths at width 1; stages past 5 stay at 512


class VGG(nn.Module):
    """Stem conv -> stages of convs, each ending in a max-pool -> pool -> classifier.

    Args:
        in_channels: Image channels ``C``.
        num_classes: Number of output logits.
        image_size: Side of square images, or ``(height, width)``.
        width: Multiplier of VGG's stage widths (64 ... 512), at least 1 channel each.
        depths: Convs per stage: VGG-16 ``[2, 2, 3, 3, 3]``, VGG-11 ``[1, 1, 2, 2, 2]``,
            VGG-19 ``[2, 2, 4, 4, 4]``.
        hidden: Widths of the classifier's hidden layers (VGG: ``[4096, 4096]``).
        dropout: Dropout after each hidden layer (before the logits without hidden layers).

    Attributes ``stem`` (the first conv), ``blocks`` (one per stage, the first holding that
    stage's other convs: the cut points) and ``head``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | Sequence[int],
                 width: float = 0.25, depths: Sequence[int] = (2, 2, 3, 3, 3),
                 hidden: Sequence[int] = (128,), dropout: float = 0.5) -> None:
        super().__init__()
        depths = [int(d) for d in depths]
        if not depths or min(depths) < 1:
            raise ValueError(f"depths must be a non-empty list of positive ints, got {depths}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.image_size = image_size if isinstance(image_size, int) else image_hw(image_size)
        widths = [max(1, int(STAGE_WIDTHS[min(i, 4)] * width)) for i in range(len(depths))]

        self.stem = ConvBNAct(in_channels, widths[0], 3)
        side, channels, stages = min(image_hw(image_size)), widths[0], []
        for stage, (depth, out) in enumerate(zip(depths, widths, strict=True)):
            layers: list[nn.Module] = []
            for _ in range(depth - 1 if stage == 0 else depth):  # the stem is stage 1's first
                layers.append(ConvBNAct(channels, out, 3))
                channels = out
            if side >= 2:  # a 1-pixel map has nothing left to pool
                layers.append(nn.MaxPool2d(2))
                side //= 2
            stages.append(nn.Sequential(*layers) if layers else nn.Identity())
        self.blocks = nn.Sequential(*stages)
        self.head = ClassifierHead(channels, num_classes, hidden=[int(h) for h in hidden],
                                   dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
