"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018) for small images.

Both scale every width by ``alpha`` and take their stride-2 layers from a ``strides`` list:
``null`` is the paper's layout (32x downsampling) with the stride-2 layers that would leave a
feature map under 2x2 turned into stride 1 (8x8 digits: two halvings, 32x32: four, 96x96: all
five), so small and large images use the same network; an explicit list is used as given.

The MobileNetV1 defaults are MLPerf Tiny's visual-wake-words reference (the Silicon Labs / EEMBC
Keras model): alpha 0.25 on 96x96x3, ReLU, biased convs, global average pooling, dense layer:
221,794 parameters for 2 classes counted as Keras counts them (BatchNorm's running mean and
variance included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tinyexp.models.blocks import (
    ClassifierHead,
    ConvBNAct,
    DepthwiseSeparable,
    fit_strides,
    image_hw,
    init_weights,
)

# MobileNetV1: (output width at alpha 1, stride) of the 13 depthwise-separable blocks
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             *[(512, 1)] * 5, (1024, 2), (1024, 1)]
V1_STEM = 32

# MobileNetV2: (expansion t, width c at alpha 1, repeats n, stride s) of each stage (Table 2)
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]
V2_STEM = 32


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor`` without losing more than 10% (Keras)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _strides(strides: Sequence[int] | None, layout: list[int], side: int) -> list[int]:
    if strides is None:
        return fit_strides(layout, side)
    strides = [int(s) for s in strides]
    if len(strides) != len(layout) or any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides must be {len(layout)} values of 1 or 2 (the stem, then "
                         f"every block), got {strides}")
    return strides


class MobileNetV1(nn.Module):
    """3x3 conv (stride 2) -> 13 depthwise-separable blocks -> global average pool -> Linear.

    Args:
        in_channels: Image channels ``C``.
        num_classes: Number of output logits.
        image_size: Side of square images, or ``(height, width)``.
        alpha: Width multiplier: every width is ``int(width * alpha)`` (Keras' rule).
        strides: 14 strides, the stem's then each block's; null: the paper's
            ``[2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]``, fitted to small inputs (the last maps
            at least 2x2).
        activation: ``relu`` (the MLPerf reference) or ``relu6`` (Keras' MobileNet).
        conv_bias: Biases on every conv (Keras' default, which the MLPerf counts include).
        dropout: Dropout before the Linear.

    Attributes ``stem``, ``blocks`` (the 13 blocks: the cut points), ``head``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | Sequence[int],
                 alpha: float = 0.25, strides: Sequence[int] | None = None,
                 activation: str = "relu", conv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.image_size = image_size if isinstance(image_size, int) else image_hw(image_size)
        layout = [2, *(s for _, s in V1_BLOCKS)]
        stem_stride, *block_strides = _strides(strides, layout, min(image_hw(image_size)))
        widths = [int(w * alpha) for w in (V1_STEM, *(w for w, _ in V1_BLOCKS))]
        if min(widths) < 1:
            raise ValueError(f"alpha={alpha} leaves a layer without channels")

        self.stem = ConvBNAct(in_channels, widths[0], 3, stem_stride, bias=conv_bias,
                              act=activation)
        self.blocks = nn.Sequential(*(
            DepthwiseSeparable(widths[i], widths[i + 1], s, bias=conv_bias, act=activation)
            for i, s in enumerate(block_strides)))
        self.head = ClassifierHead(widths[-1], num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class InvertedResidual(nn.Module):
    """1x1 expansion (t x) -> ReLU6 -> 3x3 depthwise (stride) -> ReLU6 -> 1x1 linear projection,
    plus the input where the shape is unchanged (stride 1, same width)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers = [ConvBNAct(in_ch, hidden, 1, act="relu6")] if expansion != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                   ConvBNAct(hidden, out_ch, 1, act=None)]  # linear bottleneck: no activation
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """3x3 conv (stride 2) -> 17 inverted residual blocks -> 1x1 conv -> pool -> Linear.

    Widths are ``make_divisible(width * alpha, 8)`` as in Keras; the last 1x1 conv has
    ``last_width`` channels (Keras: 1280 for alpha <= 1). Activations are ReLU6; convs have no
    bias (BatchNorm follows each).

    Args:
        in_channels: Image channels ``C``.
        num_classes: Number of output logits.
        image_size: Side of square images, or ``(height, width)``.
        alpha: Width multiplier.
        strides: 18 strides, the stem's then each block's; null: the paper's layout (stem 2,
            then the first block of stages 2, 3, 4 and 6), fitted to small inputs (the last
            maps at least 2x2).
        expansion: Expansion factor ``t`` of every block but the first (which has 1).
        last_width: Channels of the last 1x1 conv, the features the classifier reads.
        dropout: Dropout before the Linear.

    Attributes ``stem``, ``blocks`` (17 inverted residual blocks then the last 1x1 conv: the cut
    points), ``head``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | Sequence[int],
                 alpha: float = 0.35, strides: Sequence[int] | None = None, expansion: int = 6,
                 last_width: int = 1280, dropout: float = 0.2) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.image_size = image_size if isinstance(image_size, int) else image_hw(image_size)
        specs = [(expansion if t != 1 else 1, make_divisible(int(c * alpha)), s if i == 0 else 1)
                 for t, c, n, s in V2_STAGES for i in range(n)]
        layout = [2, *(s for _, _, s in specs)]
        stem_stride, *block_strides = _strides(strides, layout, min(image_hw(image_size)))

        width = make_divisible(V2_STEM * alpha)
        self.stem = ConvBNAct(in_channels, width, 3, stem_stride, act="relu6")
        blocks: list[nn.Module] = []
        for (t, out, _), s in zip(specs, block_strides, strict=True):
            blocks.append(InvertedResidual(width, out, s, t))
            width = out
        blocks.append(ConvBNAct(width, last_width, 1, act="relu6"))
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(last_width, num_classes, dropout=dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
