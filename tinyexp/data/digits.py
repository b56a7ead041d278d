"""scikit-learn's bundled 8x8 handwritten digits (offline) as a classification datamodule."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(pl.LightningDataModule):
    """Digits images (B, 1, 8, 8) in [0, 1] with int64 labels; stratified seeded splits.

    ``setup()`` is idempotent and works without a Trainer. Loaders yield ``(x, y)``.
    """

    task = "classification"
    in_channels = 1
    image_size = 8
    num_classes = 10

    def __init__(
        self,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if val_fraction <= 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
            raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction}")
        self.save_hyperparameters()
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load and split once; later calls are no-ops."""
        if self.splits:
            return
        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
        y = digits.target.astype(np.int64)
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=self.test_fraction, stratify=y, random_state=self.seed
        )
        # val_fraction is a share of the whole set, so rescale it to the remainder.
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest,
            y_rest,
            test_size=self.val_fraction / (1.0 - self.test_fraction),
            stratify=y_rest,
            random_state=self.seed,
        )
        self.splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        x, y = self.splits[split]
        # Fresh seeded generator per call: the shuffle order depends only on `seed`.
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator, num_workers=0
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) training loader."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation loader, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test loader, in order."""
        return self._loader("test", shuffle=False)

    def example_input(self) -> torch.Tensor:
        """One training image of shape (1, 1, 8, 8)."""
        self.setup()
        return torch.from_numpy(self.splits["train"][0][:1].copy())

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Test images (N, 1, 8, 8) float32 and labels (N,) int64."""
        self.setup()
        x, y = self.splits["test"]
        return x.copy(), y.copy()

    def calibration_windows(self, n: int) -> np.ndarray:
        """Up to ``n`` training images (float32), evenly spread, e.g. for int8 calibration."""
        self.setup()
        x = self.splits["train"][0]
        idx = np.unique(np.linspace(0, len(x) - 1, num=min(n, len(x))).round().astype(int))
        return x[idx].copy()
