"""DS-CNN (Zhang et al. 2017, "Hello Edge"): MLPerf Tiny's keyword-spotting reference.

On 49x10x1 MFCC features and 12 classes: a 10x4 conv of 64 filters with stride 2 ('same'
padding, as TensorFlow pads it) + BN + ReLU + dropout, four depthwise-separable blocks (3x3
depthwise + BN + ReLU, 1x1 pointwise of 64 + BN + ReLU), dropout, average pooling and a dense
layer. Every conv has a bias, as in the Keras reference: 24,908 parameters counted as Keras
counts them (BatchNorm's running mean and variance included). The pooling here is global; the
reference's 24x5 window over the 25x5 map leaves out the last frame (same parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tinyexp.models.blocks import (
    ClassifierHead,
    DepthwiseSeparable,
    halve,
    image_hw,
    init_weights,
)

STEM_KERNEL = (10, 4)  # time x cepstral coefficients
STEM_STRIDE = 2


def same_padding(side: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same': the extra pixel of an odd total after."""
    total = max((halve(side, stride) - 1) * stride + kernel - side, 0)
    return total // 2, total - total // 2


class DSCNN(nn.Module):
    """Stem conv (10x4, stride 2) -> depthwise-separable blocks -> pool -> Linear.

    Args:
        in_channels: Input channels ``C`` (1 for MFCCs).
        num_classes: Number of output logits.
        image_size: Side of square inputs, or ``(height, width)``: ``(49, 10)`` for 49 frames
            of 10 MFCCs.
        filters: Channels of every conv.
        num_blocks: Depthwise-separable blocks.
        dropout: Dropout before the Linear (the reference: 0.4).
        stem_dropout: Dropout after the stem (the reference: 0.2).
        conv_bias: Biases on every conv (Keras' default, which the MLPerf counts include).

    Attributes ``stem``, ``blocks`` (the cut points) and ``head``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | Sequence[int],
                 filters: int = 64, num_blocks: int = 4, dropout: float = 0.4,
                 stem_dropout: float = 0.2, conv_bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.image_size = image_size if isinstance(image_size, int) else image_hw(image_size)
        (top, bottom), (left, right) = (same_padding(side, k, STEM_STRIDE)
                                        for side, k in zip(image_hw(image_size), STEM_KERNEL,
                                                           strict=True))
        stem: list[nn.Module] = []
        if (top, left) != (bottom, right):  # asymmetric: a conv's own padding cannot do it
            stem.append(nn.ZeroPad2d((left, right, top, bottom)))
            top = left = 0
        stem += [nn.Conv2d(in_channels, filters, STEM_KERNEL, STEM_STRIDE, padding=(top, left),
                           bias=conv_bias),
                 nn.BatchNorm2d(filters), nn.ReLU()]
        if stem_dropout > 0:
            stem.append(nn.Dropout(stem_dropout))
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(*(DepthwiseSeparable(filters, filters, bias=conv_bias)
                                      for _ in range(num_blocks)))
        self.head = ClassifierHead(filters, num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
