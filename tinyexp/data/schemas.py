"""Schemas of the image datasets (MNIST, Fashion-MNIST, CIFAR-10/100): standard library only.

Each dataclass's fields are its YAML keys (``conf/dataset/<name>.yaml``); ``__post_init__``
checks their ranges and that the data files are there, without parsing them: a look-up, the
4-byte magic number of each IDX file and the size of each CIFAR file (milliseconds). Files that
are missing while ``download`` is false give one ``ConfigError("dataset.data_dir", ...)`` line
saying which files to put where, before anything trains.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tinyexp.checks import ConfigError, _fraction, _positive, _require
from tinyexp.data.download import (
    find_files,
    missing_message,
    resolve_data_dir,
    tarball_of,
)

# IDX magic numbers: 0x0000, the element type (0x08: unsigned byte), the number of dimensions.
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}  # 2051, 2049
CIFAR_PIXELS = 3 * 32 * 32


@dataclass
class Augment:
    """Training-batch augmentation: a random crop after zero padding, a random mirror."""

    crop_padding: int = 0  # pixels of zero padding before the random crop; 0: off
    hflip: bool = False    # flip each image left-right with probability 1/2


@dataclass
class _ImageData:
    _target_: str
    name: str
    task: str = "classification"
    input: str = "image"
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 128
    train_samples: int | None = None
    test_samples: int | None = None
    augment: Augment = field(default_factory=Augment)

    SHAPE: ClassVar[tuple[int, int, int]] = (1, 28, 28)

    def num_classes(self) -> int:
        """How many classes the labels hold."""
        return 10

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return self.SHAPE

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "dataset.seed", f"must be an int >= 0, got {self.seed}")
        _fraction("dataset.val_fraction", self.val_fraction, closed_low=False)
        _positive("dataset.batch_size", self.batch_size)
        classes = self.num_classes()
        # Each class gives at least one image to training and one to validation.
        _require(self.train_samples is None or self.train_samples >= 2 * classes,
                 "dataset.train_samples", f"must be null (all training images) or an int >= "
                 f"{2 * classes} (an image per class for training and for validation), "
                 f"got {self.train_samples}")
        _require(self.test_samples is None or self.test_samples >= classes,
                 "dataset.test_samples", f"must be null (all test images) or an int >= "
                 f"{classes} (every class scored), got {self.test_samples}")
        side = min(self.SHAPE[1:])
        _require(0 <= self.augment.crop_padding < side, "dataset.augment.crop_padding",
                 f"must be an int in [0, {side}) (0: no random crop), "
                 f"got {self.augment.crop_padding}")
        self._check_files()

    def _check_files(self) -> None:
        root = resolve_data_dir(self.name, self.data_dir)
        found = find_files(self.name, root)
        if found is None:
            if tarball_of(self.name, root) is not None:
                return  # extracted on first use; a damaged archive is reported then
            if self.download:
                from tinyexp.config import writable_folder  # lazily: it imports this module

                writable_folder("dataset.data_dir", root)
                return
            raise ConfigError("dataset.data_dir",
                              missing_message(self.name, root, default=self.data_dir is None))
        self._check_headers(found)

    def _check_headers(self, found: dict[str, Path]) -> None:
        """The cheap part of the reader's checks: the first bytes or the size of each file."""


@dataclass
class _IDXData(_ImageData):
    def _check_headers(self, found: dict[str, Path]) -> None:
        for file, path in found.items():
            kind = "images" if "-images-" in file else "labels"
            try:
                opener = gzip.open if path.suffix == ".gz" else open
                with opener(path, "rb") as handle:
                    head = handle.read(4)
            except OSError as err:
                raise ConfigError("dataset.data_dir", f"{path}: cannot be read "
                                                      f"({err})") from None
            magic = int.from_bytes(head, "big") if len(head) == 4 else None
            _require(magic == IDX_MAGIC[kind], "dataset.data_dir",
                     f"{path}: not an IDX {kind} file (magic number {magic}, expected "
                     f"{IDX_MAGIC[kind]}); replace it with the original file")


@dataclass
class MNISTData(_IDXData):
    name: str = "mnist"


@dataclass
class FashionMNISTData(_IDXData):
    name: str = "fashion_mnist"


@dataclass
class _CIFARData(_ImageData):
    SHAPE: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    LABEL_BYTES: ClassVar[int] = 1

    def _check_headers(self, found: dict[str, Path]) -> None:
        record = self.LABEL_BYTES + CIFAR_PIXELS
        for path in found.values():
            size = path.stat().st_size
            _require(size > 0 and size % record == 0, "dataset.data_dir",
                     f"{path}: {size} bytes is not a whole number of {record}-byte records "
                     f"(truncated or not the binary version); replace it with the original")


@dataclass
class CIFAR10Data(_CIFARData):
    name: str = "cifar10"


@dataclass
class CIFAR100Data(_CIFARData):
    name: str = "cifar100"
    label: str = "fine"  # fine: 100 classes; coarse: the 20 superclasses
    LABEL_BYTES: ClassVar[int] = 2

    def num_classes(self) -> int:
        """100 fine classes, or 20 coarse ones."""
        _require(self.label in ("fine", "coarse"), "dataset.label",
                 f"must be fine (100 classes) or coarse (20 superclasses), got {self.label!r}")
        return 100 if self.label == "fine" else 20


IMAGE_DATA_SCHEMAS: dict[str, type] = {
    "mnist": MNISTData,
    "fashion_mnist": FashionMNISTData,
    "cifar10": CIFAR10Data,
    "cifar100": CIFAR100Data,
}
