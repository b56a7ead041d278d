"""Schemas of the image architectures of the model zoo: stdlib only.

One dataclass per ``conf/arch`` option, its fields the YAML keys with the YAML's defaults;
``__post_init__`` checks the ranges and ``check_input`` whether the dataset's images are large
enough for the configured downsampling. A stride-2 layer needs at least 2 pixels to halve
(convs round up, 'same' padding): ``n`` of them in a row need a side of ``2**(n-1) + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyexp.checks import _fraction, _positive, _require, _widths

MOBILENET_V1_LAYERS = 14  # the stem, then 13 depthwise-separable blocks
MOBILENET_V2_LAYERS = 18  # the stem, then 17 inverted residual blocks


def _min_side(halvings: int) -> int:
    """The smallest side on which ``halvings`` stride-2 layers each get 2 pixels to halve."""
    return 2 ** (halvings - 1) + 1 if halvings else 1


def _check_strides(key: str, strides: list[int] | None, layers: int) -> None:
    _require(strides is None or (len(strides) == layers and set(strides) <= {1, 2}), key,
             f"must be null (the paper's layout, fitted to the input) or {layers} strides of 1 "
             f"or 2 (the stem's, then each block's), got {strides}")


def _check_halvings(key: str, halvings: int, shape: tuple[int, int, int], what: str) -> None:
    """``what`` (e.g. "has 3 stride-2 layers") needs ``_min_side(halvings)`` on the short side."""
    need = _min_side(halvings)
    _require(min(shape[1:]) >= need, key, f"{what}: needs images of at least {need}x{need}, "
             f"dataset gives {shape[1]}x{shape[2]}")


@dataclass
class ResNetArch:
    _target_: str
    name: str = "resnet"
    input: str = "image"
    version: int = 1
    block: str = "basic"
    depths: list[int] = field(default_factory=lambda: [1, 1, 1])
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    stem_width: int = 16
    shortcut_norm: bool = False
    conv_bias: bool = True

    def __post_init__(self) -> None:
        _require(self.version in (1, 2), "arch.version",
                 f"must be 1 (post-activation) or 2 (pre-activation), got {self.version}")
        _require(self.block in ("basic", "bottleneck"), "arch.block",
                 f"must be basic or bottleneck, got {self.block!r}")
        _widths("arch.depths", self.depths)
        _widths("arch.widths", self.widths)
        _require(len(self.widths) == len(self.depths), "arch.widths",
                 f"must have one width per stage of arch.depths ({len(self.depths)}), "
                 f"got {len(self.widths)}")
        _positive("arch.stem_width", self.stem_width)

    def check_input(self, shape: tuple[int, int, int]) -> None:
        """Every stage after the first starts with a stride-2 block."""
        n = len(self.depths)
        _check_halvings("arch.depths", n - 1, shape,
                        f"has {n} stages, so {n - 1} stride-2 blocks")


@dataclass
class MobileNetV1Arch:
    _target_: str
    name: str = "mobilenet_v1"
    input: str = "image"
    alpha: float = 0.25
    strides: list[int] | None = None
    activation: str = "relu"
    conv_bias: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Keras' int(width * alpha) must leave the narrowest layer (the stem's 32) a channel
        _require(self.alpha >= 1 / 32, "arch.alpha",
                 f"must be >= 1/32 (the 32-wide stem keeps a channel), got {self.alpha}")
        _check_strides("arch.strides", self.strides, MOBILENET_V1_LAYERS)
        _require(self.activation in ("relu", "relu6"), "arch.activation",
                 f"must be relu or relu6, got {self.activation!r}")
        _fraction("arch.dropout", self.dropout)

    def check_input(self, shape: tuple[int, int, int]) -> None:
        """Explicit strides must fit the images; null strides fit themselves (maps >= 2x2)."""
        if self.strides is not None:
            n = self.strides.count(2)
            _check_halvings("arch.strides", n, shape, f"has {n} stride-2 layers")


@dataclass
class MobileNetV2Arch:
    _target_: str
    name: str = "mobilenet_v2"
    input: str = "image"
    alpha: float = 0.35
    strides: list[int] | None = None
    expansion: int = 6
    last_width: int = 1280
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _positive("arch.alpha", self.alpha)  # widths round to multiples of 8, at least 8
        _check_strides("arch.strides", self.strides, MOBILENET_V2_LAYERS)
        _positive("arch.expansion", self.expansion)
        _positive("arch.last_width", self.last_width)
        _fraction("arch.dropout", self.dropout)

    def check_input(self, shape: tuple[int, int, int]) -> None:
        """Explicit strides must fit the images; null strides fit themselves (maps >= 2x2)."""
        if self.strides is not None:
            n = self.strides.count(2)
            _check_halvings("arch.strides", n, shape, f"has {n} stride-2 layers")


@dataclass
class VGGArch:
    _target_: str
    name: str = "vgg"
    input: str = "image"
    width: float = 0.25
    depths: list[int] = field(default_factory=lambda: [2, 2, 3, 3, 3])
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _positive("arch.width", self.width)
        _widths("arch.depths", self.depths)
        _require(all(h > 0 for h in self.hidden), "arch.hidden",
                 f"must be a list of positive ints (may be empty), got {list(self.hidden)}")
        _fraction("arch.dropout", self.dropout)

    def check_input(self, shape: tuple[int, int, int]) -> None:
        """Any size fits: a stage pools only while the feature map has 2 pixels to pool."""


@dataclass
class DSCNNArch:
    _target_: str
    name: str = "ds_cnn"
    input: str = "image"
    filters: int = 64
    num_blocks: int = 4
    dropout: float = 0.4
    stem_dropout: float = 0.2
    conv_bias: bool = True

    def __post_init__(self) -> None:
        _positive("arch.filters", self.filters)
        _require(self.num_blocks >= 1, "arch.num_blocks", f"must be >= 1, got {self.num_blocks}")
        _fraction("arch.dropout", self.dropout)
        _fraction("arch.stem_dropout", self.stem_dropout)

    def check_input(self, shape: tuple[int, int, int]) -> None:
        """The stride-2 stem conv needs 2 pixels to halve."""
        _check_halvings("arch", 1, shape, "ds_cnn's stem conv has stride 2")


IMAGE_ARCH_SCHEMAS: dict[str, type] = {
    "resnet": ResNetArch,
    "mobilenet_v1": MobileNetV1Arch,
    "mobilenet_v2": MobileNetV2Arch,
    "vgg": VGGArch,
    "ds_cnn": DSCNNArch,
}
