"""The in-memory image classification datamodule the MNIST and CIFAR families share.

A subclass says which files it needs (``name``, a key of :data:`tinyexp.data.download.LAYOUTS`),
its image shape and classes, and reads them (:meth:`ImageDataModule._read`) into uint8 arrays.
This base class finds or fetches the files, draws the optional class-balanced subsets, holds
out a stratified validation split from the training files, and serves batches: images stay uint8
in memory (CIFAR-10's 50,000 training images are 150 MB so, 600 MB as float32) and each batch is
cut with one fancy index, augmented on the tensor and converted to float32 in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from tinyexp.checks import ConfigError
from tinyexp.data.download import missing_message, prepare, resolve_data_dir

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images (N, C, H, W), int64 labels (N,)


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1]: the one conversion, so every path gives equal bits."""
    if isinstance(images, np.ndarray):  # a new array: also fine for read-only file buffers
        images = torch.from_numpy(images.astype(np.float32))
    return images.to(torch.float32).div_(255.0)


def augment_batch(x: torch.Tensor, crop_padding: int, hflip: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """Random crops after zero padding, and random mirrors, of a (B, C, H, W) batch.

    Args:
        x: the batch (any dtype; uint8 here).
        crop_padding: pad each side by this many zeros, then cut an H x W window at a random
            offset per image; 0 skips it.
        hflip: mirror each image left-right with probability 1/2.
        generator: the source of the offsets and flips (seeded: same seed, same batches).
    """
    b, c, h, w = x.shape
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows, cols]
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items drawn evenly from each class (a class with too few gives
    all it has and the others make up the difference), at random within each class."""
    if n >= len(labels):
        return np.arange(len(labels))
    perm = rng.permutation(len(labels))
    by_class = perm[np.argsort(labels[perm], kind="stable")]  # random order within a class
    grouped = labels[by_class]
    rank = np.arange(len(grouped)) - np.searchsorted(grouped, grouped, side="left")
    # Round-robin over the classes (in a random order) until n are taken.
    classes = np.unique(labels)
    position = np.empty(int(classes.max()) + 1, dtype=np.int64)
    position[classes] = rng.permutation(len(classes))
    order = np.argsort(rank * len(classes) + position[grouped], kind="stable")
    return np.sort(by_class[order[:n]])


def stratified_split(labels: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices: ``fraction`` of each class held out, at random; each
    class of two or more items keeps one and holds one out at least."""
    perm = rng.permutation(len(labels))
    by_class = perm[np.argsort(labels[perm], kind="stable")]
    grouped = labels[by_class]
    start = np.searchsorted(grouped, grouped, side="left")
    count = np.searchsorted(grouped, grouped, side="right") - start
    rank = np.arange(len(grouped)) - start
    held = np.clip(np.rint(fraction * count), 1, count - 1)
    held_out = rank < np.where(count >= 2, held, 0)
    return np.sort(by_class[~held_out]), np.sort(by_class[held_out])


def _stream(seed: int, purpose: str) -> int:
    """A seed of its own for each use of ``seed``: independent streams, none shared."""
    return int(np.random.SeedSequence([seed, *purpose.encode()]).generate_state(1)[0])


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(_stream(seed, purpose))


class _Batches(Dataset):
    """Indexed by a list of positions (a batch sampler's): one fancy index per batch."""

    def __init__(self, arrays: Arrays, augment: dict[str, Any] | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.images, self.labels = arrays
        self.augment, self.generator = augment, generator

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(index)
        x = torch.from_numpy(self.images[index])
        if self.augment:
            x = augment_batch(x, generator=self.generator, **self.augment)
        return to_unit(x), torch.from_numpy(self.labels[index])


class ImageDataModule(pl.LightningDataModule):
    """Images (B, C, H, W) float32 in [0, 1] with int64 labels, from the data set's own files.

    The official test files are the test split; ``val_fraction`` of the training files (per
    class, seeded) validates. ``setup()`` is idempotent and works without a Trainer.

    Args:
        seed: draws the subsets, the validation split, the batch order and the augmentation.
        data_dir: the folder of the files (or its parent, for the folder a tarball makes);
            None: :func:`tinyexp.data.download.default_data_dir`.
        download: fetch missing files from their standard sources (md5-checked).
        val_fraction: share of the training images held out for validation (per class).
        batch_size: images per batch.
        train_samples: None: every training image; an int: a class-balanced seeded subset of
            the training files (the validation split is then taken from it).
        test_samples: None: every test image; an int: a class-balanced seeded subset.
        augment: ``{"crop_padding": int, "hflip": bool}`` for the training batches only.
    """

    task = "classification"
    name = ""  # the data set's key in tinyexp.data.download.LAYOUTS
    in_channels = 1
    image_size = 28
    num_classes = 10

    def __init__(
        self,
        seed: int = 0,
        data_dir: str | None = None,
        download: bool = False,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        train_samples: int | None = None,
        test_samples: int | None = None,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        augment = dict(augment or {})
        self.save_hyperparameters()
        self.seed, self.data_dir, self.download = seed, data_dir, download
        self.val_fraction, self.batch_size = val_fraction, batch_size
        self.train_samples, self.test_samples = train_samples, test_samples
        self.augment = {"crop_padding": int(augment.get("crop_padding", 0)),
                        "hflip": bool(augment.get("hflip", False))}
        self.splits: dict[str, Arrays] = {}

    def _read(self, files: dict[str, Path]) -> tuple[Arrays, Arrays]:
        """(training, test) arrays from the located files (file name -> path)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Find (extract, download) and read the files, subset and split once; later calls
        are no-ops."""
        if self.splits:
            return
        root = resolve_data_dir(self.name, self.data_dir)
        files = prepare(self.name, root, download=self.download)
        if files is None:
            raise ConfigError("dataset.data_dir",
                              missing_message(self.name, root, default=self.data_dir is None))
        (x_train, y_train), (x_test, y_test) = self._read(files)
        # Independent streams for the training subset, the test subset and the split.
        if self.train_samples is not None:
            keep = balanced_subset(y_train, self.train_samples, _rng(self.seed, "train"))
            x_train, y_train = x_train[keep], y_train[keep]
        if self.test_samples is not None:
            keep = balanced_subset(y_test, self.test_samples, _rng(self.seed, "test"))
            x_test, y_test = x_test[keep], y_test[keep]
        train, val = stratified_split(y_train, self.val_fraction, _rng(self.seed, "split"))
        self.splits = {"train": (x_train[train], y_train[train]),
                       "val": (x_train[val], y_train[val]), "test": (x_test, y_test)}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        augment, generator = None, None
        if split == "train" and (self.augment["crop_padding"] or self.augment["hflip"]):
            # Fresh seeded generators per call: the batches depend only on `seed`.
            augment = self.augment
            generator = torch.Generator().manual_seed(_stream(self.seed, "augment"))
        dataset = _Batches(self.splits[split], augment, generator)
        order = (RandomSampler(dataset, generator=torch.Generator().manual_seed(
                     _stream(self.seed, "shuffle")))
                 if shuffle else SequentialSampler(dataset))
        # batch_size=None: the sampler hands over whole batches of indices.
        return DataLoader(dataset, sampler=BatchSampler(order, self.batch_size, drop_last=False),
                          batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded), augmented (if configured) training loader."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation loader, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test loader, in order."""
        return self._loader("test", shuffle=False)

    def example_input(self) -> torch.Tensor:
        """One training image of shape (1, C, H, W)."""
        self.setup()
        return to_unit(self.splits["train"][0][:1].copy())

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Test images (N, C, H, W) float32 in [0, 1] and labels (N,) int64."""
        self.setup()
        x, y = self.splits["test"]
        return to_unit(x).numpy(), y.copy()

    def calibration_windows(self, n: int) -> np.ndarray:
        """Up to ``n`` training images (float32, not augmented), evenly spread."""
        self.setup()
        x = self.splits["train"][0]
        idx = np.unique(np.linspace(0, len(x) - 1, num=min(n, len(x))).round().astype(int))
        return to_unit(x[idx]).numpy()
