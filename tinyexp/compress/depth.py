"""Depth pruning: cut a network of blocks after block ``k`` and finish it with a small head.

A cuttable network follows the zoo's contract: attributes ``stem``, ``blocks`` (an
``nn.Sequential`` of blocks whose outputs are ``(B, C, H, W)`` feature maps) and ``head``, with
``forward(x) = head(blocks(stem(x)))``, and ``num_classes``. :func:`cut_network` keeps ``stem``
and ``blocks[:k]`` (copies) and replaces everything after them by an :class:`AuxiliaryHead`
(depthwise-separable convolutions, global average pooling, a linear classifier), as in the
depth-pruning study of MLPerf Tiny's VWW MobileNet and KWS DS-CNN (De Leon and Atienza, "Depth
Pruning with Auxiliary Networks for TinyML", ICASSP 2022). The result follows the same contract,
so it exports, prunes, quantizes and trains like any zoo model.

While the head trains, the kept blocks can be frozen (:meth:`CutNetwork.freeze`): their
parameters get no gradient (the optimizer skips them) and their BatchNorm layers stay in eval
mode, so the features the head learns from are exactly the trained network's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Attributes of the original network a cut copy carries over (what describes its input/output).
_CARRIED = ("in_channels", "image_size")


def block_count(net: nn.Module) -> int | None:
    """``len(net.blocks)`` if ``net`` follows the contract (``stem``, ``blocks`` as an
    ``nn.Sequential``, ``head``), else None."""
    stem, blocks, head = (getattr(net, name, None) for name in ("stem", "blocks", "head"))
    if not (isinstance(stem, nn.Module) and isinstance(blocks, nn.Sequential)
            and isinstance(head, nn.Module)):
        return None
    return len(blocks)


def features(net: nn.Module, cut: int, example: torch.Tensor) -> torch.Tensor:
    """The output of ``stem`` and ``blocks[:cut]`` on ``example`` (eval mode, no gradients;
    ``net``'s mode is restored): what an auxiliary head after block ``cut`` reads."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return net.blocks[:cut](net.stem(example))
    finally:
        net.train(was_training)


def num_classes(net: nn.Module, example: torch.Tensor) -> int:
    """``net.num_classes``, or the width of its output on ``example`` if it has none."""
    count = getattr(net, "num_classes", None)
    if count is not None:
        return int(count)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return int(net(example).shape[1])
    finally:
        net.train(was_training)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 -> BatchNorm -> ReLU -> pointwise 1x1 -> BatchNorm -> ReLU, stride 1:
    MobileNet's block, the cheapest convolution that still mixes space and channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),  # BN: the bias
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        )


class AuxiliaryHead(nn.Sequential):
    """``convs`` x :class:`SeparableConv` (to ``width`` channels) -> global average pooling
    -> Linear(classes). With ``convs=0``: pooling and the classifier only.

    Args:
        in_ch: Channels of the feature map at the cut.
        num_classes: Number of output logits.
        width: Pointwise width of each separable convolution (unused with ``convs=0``).
        convs: Number of separable convolutions, >= 0.
    """

    def __init__(self, in_ch: int, num_classes: int, width: int, convs: int = 1) -> None:
        if convs < 0 or width < 1:
            raise ValueError(f"AuxiliaryHead: needs convs >= 0 and width >= 1, got convs={convs}, "
                             f"width={width}")
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers.append(SeparableConv(in_ch, width))
            in_ch = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(in_ch, num_classes))


class CutNetwork(nn.Module):
    """The kept ``stem`` and ``blocks`` of a network and an auxiliary ``head``: the zoo's
    contract, ``forward(x) = head(blocks(stem(x)))``.

    Attributes:
        frozen: whether ``stem`` and ``blocks`` are frozen (see :meth:`freeze`).
        num_classes: number of output logits.
    """

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, head: nn.Module,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.head = head
        self.num_classes = num_classes
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def freeze(self, frozen: bool = True) -> CutNetwork:
        """Freeze (or thaw) ``stem`` and ``blocks``: no gradients for their parameters, and
        eval mode for their BatchNorm and Dropout layers whatever ``train()`` asks, so their
        running statistics stay those of the trained network. Returns ``self``."""
        self.frozen = frozen
        for part in (self.stem, self.blocks):
            part.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> CutNetwork:
        # Lightning calls train() on the whole model (and restores each module's own mode after
        # validation), so keeping the frozen part in eval here holds for the whole training.
        super().train(mode)
        if self.frozen:
            self.stem.eval()
            self.blocks.eval()
        return self

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, frozen={self.frozen}"


def cut_network(net: nn.Module, cut: int, example: torch.Tensor, *, head_width: int | None = None,
                head_convs: int = 1, freeze: bool = True) -> CutNetwork:
    """A new network: copies of ``net.stem`` and ``net.blocks[:cut]``, then a fresh
    :class:`AuxiliaryHead`. ``net`` itself is left unchanged.

    Args:
        net: A network following the contract (see :func:`block_count`).
        cut: Cut after this block, 1-based: ``cut=k`` keeps ``blocks[0:k]``; in
            ``1..len(blocks) - 1`` (cutting after the last block removes no block).
        example: A batch ``net`` accepts: the channel count at the cut is read from its
            features, not guessed.
        head_width: Pointwise width of the head's convolutions; None: the channels at the cut.
        head_convs: Separable convolutions in the head, >= 0.
        freeze: Freeze the kept part (:meth:`CutNetwork.freeze`) for training the head.

    Returns:
        The cut network, in ``net``'s train/eval mode.

    Raises:
        ValueError: ``net`` has no blocks, ``cut`` is out of range, or the features at the cut
            are not ``(B, C, H, W)`` maps.
    """
    count = block_count(net)
    if count is None:
        raise ValueError(f"{type(net).__name__} has no stem, blocks (nn.Sequential) and head: "
                         f"it cannot be cut by depth")
    if not 1 <= cut <= count - 1:
        raise ValueError(f"cut must be in 1..{count - 1} for {type(net).__name__} ({count} "
                         f"blocks), got {cut}")
    maps = features(net, cut, example)
    if maps.dim() != 4:
        raise ValueError(f"the output of block {cut} of {type(net).__name__} has shape "
                         f"{tuple(maps.shape)}; an auxiliary head needs (B, C, H, W) maps")
    channels = int(maps.shape[1])
    classes = num_classes(net, example)
    head = AuxiliaryHead(channels, classes, head_width or channels, head_convs)
    cut_net = CutNetwork(copy.deepcopy(net.stem), copy.deepcopy(net.blocks[:cut]), head, classes)
    for name in _CARRIED:
        if hasattr(net, name):
            setattr(cut_net, name, getattr(net, name))
    cut_net.train(net.training)
    return cut_net.freeze(freeze)
