"""Small blocks the image architectures of the model zoo share.

Every activation is its own ``nn.ReLU``/``nn.ReLU6`` instance (never functional, never shared):
QAT and BatchNorm folding find and replace modules, and torch-pruning traces each use apart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a square side or a ``(height, width)`` pair (Hydra: ListConfig)."""
    if isinstance(image_size, int):
        return image_size, image_size
    sizes = [int(s) for s in image_size]
    if len(sizes) != 2:
        raise ValueError(f"image_size must be a side or (height, width), got {sizes}")
    return sizes[0], sizes[1]


def halve(side: int, stride: int) -> int:
    """Output side of a stride-``stride`` conv with 'same'-style padding: ``ceil(side / s)``."""
    return -(-side // stride)


def fit_strides(strides: Sequence[int], side: int) -> list[int]:
    """``strides`` with every stride 2 that would leave a feature map under 2x2 made 1.

    A standard layout (MobileNet's five stride-2 layers, 32x) on a small input (8x8 digits,
    32x32 CIFAR) runs out of pixels: the later stride-2 layers keep their place but stop
    downsampling, so the network stays the paper's and its last stages run at 2x2. On a 1x1
    map a 3x3 depthwise kernel would see only its centre (eight of its nine weights dead) and
    BatchNorm only one value per image.
    """
    fitted = []
    for s in strides:
        s = 1 if halve(side, int(s)) < 2 else int(s)
        side = halve(side, s)
        fitted.append(s)
    return fitted


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation (none for a linear bottleneck), 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, *,
                 groups: int = 1, bias: bool = False, act: str | None = "relu") -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2,
                           groups=groups, bias=bias),
            bn=nn.BatchNorm2d(out_ch),
        )
        if act is not None:
            layers["act"] = ACTIVATIONS[act]()
        super().__init__(layers)


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv (stride ``s``) -> BN -> act, then 1x1 pointwise conv -> BN -> act.

    MobileNetV1's block and DS-CNN's. The depthwise conv has one filter per channel
    (``groups == channels``): torch-pruning prunes its channels together with its input's.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, bias: bool = False,
                 act: str = "relu") -> None:
        super().__init__(OrderedDict(
            depthwise=ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, bias=bias, act=act),
            pointwise=ConvBNAct(in_ch, out_ch, 1, bias=bias, act=act),
        ))


class ClassifierHead(nn.Sequential):
    """Last block's ``(B, C, H, W)`` features -> logits: [BN -> ReLU] -> global average pool ->
    flatten -> [Linear -> ReLU -> Dropout]* -> (Dropout) -> Linear, as VGG's classifier.

    Global average pooling makes the head independent of the feature map's size, so a network
    cut after any block takes the same kind of head (only ``in_ch`` changes).

    Args:
        in_ch: Channels of the features.
        num_classes: Logits.
        hidden: Widths of hidden fully-connected layers (VGG's classifier), none by default.
        dropout: Dropout after each hidden layer, or before the Linear without any (none at 0).
        pre_act: BatchNorm + ReLU first: a pre-activation ResNet's last normalisation.
    """

    def __init__(self, in_ch: int, num_classes: int, *, hidden: Sequence[int] = (),
                 dropout: float = 0.0, pre_act: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if pre_act:
            layers["bn"] = nn.BatchNorm2d(in_ch)
            layers["act"] = nn.ReLU()
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        width = in_ch
        for i, h in enumerate(hidden):
            layers[f"fc{i}"] = nn.Linear(width, int(h))
            layers[f"act{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = int(h)
        if dropout > 0 and not hidden:  # with hidden layers the last one's dropout is here
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc"] = nn.Linear(width, num_classes)
        super().__init__(layers)


def init_weights(net: nn.Module) -> None:
    """He-normal conv weights (fan in, for ReLU) and zero conv biases, as the MLPerf Keras
    references initialise them (``he_normal``).

    PyTorch's default conv init shrinks the signal at every layer: at 30 layers an untrained
    MobileNet in eval mode gives the same logits for every input, which leaves nothing for
    pruning criteria, calibration or a parity check to look at.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
