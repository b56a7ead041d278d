"""Tiny fabricated image data sets in the real file formats (IDX, CIFAR binary, its tarball).

Random pixels (every image distinct) and labels that cycle through the classes, written exactly
as the originals lay them out, so the readers are tested on the formats and the suites run in
milliseconds. ``fabricated_dirs()`` writes one folder per data set for the whole test session.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

IDX_NAMES = {("train", "images"): "train-images-idx3-ubyte",
             ("train", "labels"): "train-labels-idx1-ubyte",
             ("test", "images"): "t10k-images-idx3-ubyte",
             ("test", "labels"): "t10k-labels-idx1-ubyte"}
CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def images_and_labels(n: int, shape: tuple[int, ...], classes: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images and labels cycling 0..classes-1, shuffled."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % classes).astype(np.uint8)
    return images, labels


def write_mnist(folder: Path, n_train: int = 100, n_test: int = 30, gz: bool = True,
                seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four IDX files of an MNIST-like set in ``folder``; returns {split: (images 28x28,
    labels)} as written."""
    arrays = {"train": images_and_labels(n_train, (28, 28), 10, seed),
              "test": images_and_labels(n_test, (28, 28), 10, seed + 1)}
    for (split, kind), name in IDX_NAMES.items():
        _write(folder / name, idx_bytes(arrays[split][kind == "labels"]), gz)
    return arrays


def cifar_bytes(images: np.ndarray, *labels: np.ndarray) -> bytes:
    """Binary-version records: the label bytes, then 3,072 pixel bytes (R, G, B planes)."""
    columns = [label[:, None].astype(np.uint8) for label in labels]
    return np.hstack([*columns, images.reshape(len(images), -1)]).tobytes()


def write_cifar10(folder: Path, per_batch: int = 20, n_test: int = 20,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``folder/cifar-10-batches-bin/`` with five training batches and the test batch."""
    out = folder / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    train = images_and_labels(5 * per_batch, (3, 32, 32), 10, seed)
    for i, name in enumerate(CIFAR10_TRAIN):
        part = slice(i * per_batch, (i + 1) * per_batch)
        (out / name).write_bytes(cifar_bytes(train[0][part], train[1][part]))
    test = images_and_labels(n_test, (3, 32, 32), 10, seed + 1)
    (out / "test_batch.bin").write_bytes(cifar_bytes(*test))
    return {"train": train, "test": test}


def write_cifar100(folder: Path, n_train: int = 400, n_test: int = 100,
                   seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``folder/cifar-100-binary/`` with train.bin and test.bin; returns {split: (images,
    coarse labels, fine labels)}; coarse = fine // 5 (any 20 superclasses will do)."""
    out = folder / "cifar-100-binary"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, file in (("train", n_train, "train.bin"), ("test", n_test, "test.bin")):
        images, fine = images_and_labels(n, (3, 32, 32), 100, seed + (split == "test"))
        arrays[split] = (images, fine // 5, fine)
        (out / file).write_bytes(cifar_bytes(images, fine // 5, fine))
    return arrays


def tar_folder(folder: Path, tarball: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A gzipped tarball of ``folder`` (members ``<folder name>/<file>``), plus ``extra``
    members given by name; ``folder`` itself is left in place."""
    with tarfile.open(tarball, "w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=f"{folder.name}/{path.name}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return tarball


_SESSION: list[tempfile.TemporaryDirectory] = []  # removed when the interpreter exits


@cache
def fabricated_dirs() -> dict[str, Path]:
    """One folder per image data set (written once per process): dataset name -> data_dir."""
    holder = tempfile.TemporaryDirectory(prefix="tinyexp-images-")
    _SESSION.append(holder)
    root = Path(holder.name)
    write_mnist(root / "mnist", gz=True)
    write_mnist(root / "fashion_mnist", gz=False, seed=5)
    write_cifar10(root / "cifar10")
    write_cifar100(root / "cifar100")
    return {name: root / name for name in ("mnist", "fashion_mnist", "cifar10", "cifar100")}


# The image set each experiment preset reads (tests point them at fabricated files).
PRESET_DATA = {"quant_modes_mnist": "mnist", "prune_int8_fashion": "fashion_mnist",
               "depth_prune": "fashion_mnist"}


def data_dir_overrides(name: str) -> list[str]:
    """The overrides that point dataset ``name`` at its fabricated folder; [] for the others."""
    dirs = fabricated_dirs() if name in ("mnist", "fashion_mnist", "cifar10", "cifar100") else {}
    return [f"dataset.data_dir={dirs[name]}"] if name in dirs else []
