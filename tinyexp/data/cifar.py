"""CIFAR-10 and CIFAR-100 from their binary versions as classification datamodules.

The binary version (https://www.cs.toronto.edu/~kriz/cifar.html) is a sequence of records: the
label byte(s) (CIFAR-100: coarse, then fine) and 3,072 pixel bytes, 1,024 each of red, green and
blue, row-major 32x32. No Python pickles are read. A file that is not a whole number of records,
or holds a label out of range, raises ``ConfigError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyexp.checks import ConfigError
from tinyexp.data.download import LAYOUTS
from tinyexp.data.images import Arrays, ImageDataModule
from tinyexp.data.schemas import CIFAR_PIXELS


def read_cifar(path: str | Path, label_bytes: int = 1, label_index: int = 0,
               classes: int = 10) -> Arrays:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one binary-version file.

    Args:
        path: a ``.bin`` file.
        label_bytes: label bytes per record: 1 (CIFAR-10), 2 (CIFAR-100: coarse, fine).
        label_index: which of them is the label (CIFAR-100: 0 coarse, 1 fine).
        classes: labels must be below this.
    """
    path = Path(path)
    raw = path.read_bytes()
    record = label_bytes + CIFAR_PIXELS
    if not raw or len(raw) % record:
        raise ConfigError(str(path), f"has {len(raw)} bytes, not a whole number of {record}-byte "
                                     f"records: truncated or not the binary version")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = records[:, label_index].astype(np.int64)
    if int(labels.max()) >= classes:
        raise ConfigError(str(path), f"holds label {int(labels.max())} at byte {label_index} "
                                     f"of a record; classes are 0..{classes - 1}")
    return np.ascontiguousarray(records[:, label_bytes:]).reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: 50,000 training and 10,000 test colour images of 10 classes, 3x32x32."""

    name = "cifar10"
    in_channels, image_size, num_classes = 3, 32, 10

    def _read(self, files: dict[str, Path]) -> tuple[Arrays, Arrays]:
        *train_files, test_file = LAYOUTS[self.name].files
        parts = [read_cifar(files[file]) for file in train_files]
        train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
        return train, read_cifar(files[test_file])


class CIFAR100DataModule(ImageDataModule):
    """CIFAR-100: 50,000 training and 10,000 test colour images, 3x32x32, with 100 fine labels
    (``label="fine"``) or their 20 superclasses (``label="coarse"``)."""

    name = "cifar100"
    in_channels, image_size, num_classes = 3, 32, 100

    def __init__(self, *args, label: str = "fine", **kwargs) -> None:
        if label not in ("fine", "coarse"):
            raise ValueError(f"label must be fine or coarse, got {label!r}")
        super().__init__(*args, **kwargs)
        self.label = label
        self.num_classes = 100 if label == "fine" else 20

    def _read(self, files: dict[str, Path]) -> tuple[Arrays, Arrays]:
        index = 1 if self.label == "fine" else 0
        return tuple(read_cifar(files[file], 2, index, self.num_classes)
                     for file in ("train.bin", "test.bin"))
