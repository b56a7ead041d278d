"""ResNet for small images: post-activation (v1, He et al. 2015) or pre-activation (v2, 2016).

The defaults are MLPerf Tiny's image-classification reference, ResNet-8 on CIFAR-10 (the
EEMBC Keras model): a 3x3 stem conv of 16 + BN + ReLU, three stages of one basic block of widths
16, 32 and 64 (stride 2 at the start of the second and third), a 1x1 projection shortcut only
where the shape changes (no BN on it), global average pooling and a dense layer; every conv
has a bias, as Keras' Conv2D does. That is 78,666 parameters counted as Keras counts them
(BatchNorm's running mean and variance included). Deeper stacks (ResNet-18/50/101 shapes at any
width) are the same code with other ``depths``, ``widths`` and ``block``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tinyexp.models.blocks import ClassifierHead, image_hw, init_weights

BOTTLENECK_EXPANSION = 4  # a bottleneck block's output is 4x its inner width (He et al.)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, bias=bias)


class ResidualBlock(nn.Module):
    """``post(branch(pre(x)) + shortcut)``: one basic or bottleneck block, v1 or v2.

    v1 (post-activation): no ``pre``; the branch ends in BN; ReLU after the addition.
    v2 (pre-activation): ``pre`` = BN -> ReLU; the branch ends in a conv; nothing after the
    addition. The shortcut is the identity, or a 1x1 conv (+ BN) where the shape changes; in
    v2 it reads the pre-activated input, as in He et al. (2016).

    Args:
        in_ch: Input channels.
        width: Output channels (basic) or inner width (bottleneck: outputs ``4 * width``).
        stride: Stride of the block (2 at the start of a downsampling stage).
        version: 1 (post-activation) or 2 (pre-activation).
        bottleneck: 1x1 -> 3x3 -> 1x1 convs instead of two 3x3 convs.
        shortcut_norm: BatchNorm after a projection shortcut's conv.
        bias: Biases on the convs.
    """

    def __init__(self, in_ch: int, width: int, stride: int, *, version: int, bottleneck: bool,
                 shortcut_norm: bool, bias: bool) -> None:
        super().__init__()
        out_ch = width * BOTTLENECK_EXPANSION if bottleneck else width
        # (out channels, kernel, stride) of each conv of the branch; the stride sits on the 3x3
        convs = ([(width, 1, 1), (width, 3, stride), (out_ch, 1, 1)] if bottleneck
                 else [(width, 3, stride), (out_ch, 3, 1)])
        self.pre = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU()) if version == 2 else None
        layers: list[nn.Module] = []
        channels = in_ch
        for i, (out, k, s) in enumerate(convs):
            if i > 0:
                layers += [nn.BatchNorm2d(channels), nn.ReLU()]
            layers.append(_conv(channels, out, k, s, bias))
            channels = out
        if version == 1:
            layers.append(nn.BatchNorm2d(out_ch))
        self.branch = nn.Sequential(*layers)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            proj: list[nn.Module] = [_conv(in_ch, out_ch, 1, stride, bias)]
            if shortcut_norm:
                proj.append(nn.BatchNorm2d(out_ch))
            self.shortcut = nn.Sequential(*proj)
        self.post = nn.ReLU() if version == 1 else None
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x if self.pre is None else self.pre(x)
        y = self.branch(a) + (x if self.shortcut is None else self.shortcut(a))
        return y if self.post is None else self.post(y)


class ResNet(nn.Module):
    """Stem -> residual blocks (stage by stage) -> global average pool -> Linear.

    Args:
        in_channels: Image channels ``C``.
        num_classes: Number of output logits.
        image_size: Side of square images, or ``(height, width)``.
        version: 1 (post-activation) or 2 (pre-activation).
        block: ``basic`` (two 3x3 convs) or ``bottleneck`` (1x1, 3x3, 1x1; 4x wider output).
        depths: Blocks per stage; every stage after the first starts with a stride-2 block.
        widths: Width of each stage (a bottleneck's inner width).
        stem_width: Output channels of the 3x3 stem conv.
        shortcut_norm: BatchNorm on the projection shortcuts (the MLPerf reference has none).
        conv_bias: Biases on every conv (Keras' default, which the MLPerf counts include).

    Attributes ``stem``, ``blocks`` (one entry per residual block: the cut points) and ``head``:
    ``forward(x) = head(blocks(stem(x)))``. Input ``(B, C, H, W)`` -> logits ``(B, classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | Sequence[int],
                 version: int = 1, block: str = "basic", depths: Sequence[int] = (1, 1, 1),
                 widths: Sequence[int] = (16, 32, 64), stem_width: int = 16,
                 shortcut_norm: bool = False, conv_bias: bool = True) -> None:
        super().__init__()
        depths, widths = [int(d) for d in depths], [int(w) for w in widths]
        if version not in (1, 2) or block not in ("basic", "bottleneck"):
            raise ValueError(f"version must be 1 or 2 and block basic or bottleneck, "
                             f"got {version} and {block!r}")
        if not depths or len(depths) != len(widths) or min(depths + widths) < 1:
            raise ValueError(f"depths and widths must be lists of positive ints of the same "
                             f"length, got {depths} and {widths}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.image_size = image_size if isinstance(image_size, int) else image_hw(image_size)

        stem: list[nn.Module] = [_conv(in_channels, stem_width, 3, 1, conv_bias)]
        if version == 1:  # v2 normalises at the start of every block instead
            stem += [nn.BatchNorm2d(stem_width), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        blocks, channels = [], stem_width
        for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride, version=version,
                                            bottleneck=block == "bottleneck",
                                            shortcut_norm=shortcut_norm, bias=conv_bias))
                channels = blocks[-1].out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(channels, num_classes, pre_act=version == 2)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
