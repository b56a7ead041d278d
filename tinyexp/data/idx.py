"""MNIST and Fashion-MNIST from their IDX files (gzipped or not) as classification datamodules.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header (magic number: two zero bytes, the
element type, 0x08 for unsigned bytes, the number of dimensions; then each dimension as a
32-bit int) followed by the elements, row-major. Images are ``idx3`` (N, 28, 28), labels
``idx1`` (N,). A file whose header, length or labels do not fit raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from tinyexp.checks import ConfigError
from tinyexp.data.images import Arrays, ImageDataModule
from tinyexp.data.schemas import IDX_MAGIC

SIDE, CLASSES = 28, 10


def _bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise ConfigError(str(path), f"is not a complete gzip file ({err}); replace it with "
                                     f"the original") from None


def read_idx(path: str | Path, kind: str) -> np.ndarray:
    """The uint8 array of an IDX file; ``kind`` is ``images`` (3 dims) or ``labels`` (1 dim).

    Raises:
        ConfigError: keyed by the file's path, when its header or length is wrong.
    """
    path = Path(path)
    raw = _bytes(path)
    magic = IDX_MAGIC[kind]
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        raise ConfigError(str(path), f"is not an IDX {kind} file: magic number {found}, "
                                     f"expected {magic}")
    if len(raw) < header:
        raise ConfigError(str(path), f"is truncated: {len(raw)} bytes, not even its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != size:
        raise ConfigError(str(path), f"has {len(raw)} bytes but its header {dims} says {size}: "
                                     f"truncated or damaged; replace it with the original")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(images_path: str | Path, labels_path: str | Path) -> Arrays:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of one split, checked together."""
    images, labels = read_idx(images_path, "images"), read_idx(labels_path, "labels")
    if images.shape[1:] != (SIDE, SIDE):
        raise ConfigError(str(images_path), f"holds {images.shape[1]}x{images.shape[2]} "
                                            f"images, expected {SIDE}x{SIDE}")
    if len(images) != len(labels):
        raise ConfigError(str(labels_path), f"holds {len(labels)} labels for the "
                                            f"{len(images)} images of {images_path}")
    if len(labels) and int(labels.max()) >= CLASSES:
        raise ConfigError(str(labels_path), f"holds label {int(labels.max())}; classes are "
                                            f"0..{CLASSES - 1}")
    return images[:, None], labels.astype(np.int64)


class MNISTDataModule(ImageDataModule):
    """MNIST: 60,000 training and 10,000 test images of handwritten digits, 1x28x28."""

    name = "mnist"
    in_channels, image_size, num_classes = 1, SIDE, CLASSES

    def _read(self, files: dict[str, Path]) -> tuple[Arrays, Arrays]:
        return (read_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"]),
                read_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]))


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: Zalando's 70,000 article images (10 classes), MNIST's format and sizes."""

    name = "fashion_mnist"
