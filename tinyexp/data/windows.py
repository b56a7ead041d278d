"""Shared pieces of the time-series datamodules: windowing, anomaly segments, base datamodule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


def make_windows(x: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """Cut a (T, C) series into overlapping windows.

    Args:
        x: series of shape (T, C).
        window: window length in rows.
        stride: step between window starts.

    Returns:
        Contiguous float32 array (N, window, C) with N = (T - window) // stride + 1;
        window i covers rows i*stride .. i*stride + window - 1.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a (T, C) series, got shape {x.shape}")
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    if len(x) < window:
        return np.zeros((0, window, x.shape[1]), dtype=np.float32)
    # sliding_window_view puts the window axis last: (N, C, window) -> (N, window, C).
    view = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)[::stride]
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)


@dataclass
class AnomalySegment:
    """One independently thresholded evaluation series.

    Attributes:
        name: identifier, e.g. ``"valve1/0"``.
        train: (N1, W, C) float32 normal windows used to calibrate this segment's threshold.
        test: (N2, W, C) float32 windows with stride 1 over the whole scaled series.
        labels: (T,) int point labels of the whole series, T = N2 + W - 1.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray


class SeriesDataModule(pl.LightningDataModule):
    """Base datamodule for windowed multivariate series; trains on normal windows only.

    Subclasses implement ``_load()``. ``setup()`` is idempotent and works without a Trainer,
    after which ``num_channels``, ``segments`` and the loaders are available. Batches are
    plain float32 tensors (B, W, C).
    """

    task = "anomaly"

    def __init__(self, seed: int, window: int, val_fraction: float, batch_size: int) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.seed = seed
        self.window = window
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_channels = 0
        self.segments: list[AnomalySegment] = []
        self.train_windows: torch.Tensor | None = None
        self.val_windows: torch.Tensor | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray, list[AnomalySegment]]:
        """Return (train windows, val windows, evaluation segments); implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement _load()")

    def setup(self, stage: str | None = None) -> None:
        """Build all arrays once; later calls (any stage) are no-ops."""
        if self.train_windows is not None:
            return
        train, val, segments = self._load()
        if len(train) == 0:
            raise ValueError(f"{type(self).__name__}: no training windows")
        self.train_windows = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
        self.val_windows = torch.from_numpy(np.ascontiguousarray(val, dtype=np.float32))
        self.segments = segments
        self.num_channels = int(train.shape[2])

    def _loader(self, windows: torch.Tensor, shuffle: bool) -> DataLoader:
        # A fresh generator per call keeps the epoch order a pure function of `seed`,
        # no matter how often Lightning rebuilds the loaders.
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        # A tensor is a valid map-style dataset; default collation stacks rows into (B, W, C).
        return DataLoader(
            windows, batch_size=self.batch_size, shuffle=shuffle, generator=generator, num_workers=0
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) loader over the normal training windows."""
        self.setup()
        return self._loader(self.train_windows, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Loader over the held-out normal windows, in order."""
        self.setup()
        return self._loader(self.val_windows, shuffle=False)

    def example_input(self) -> torch.Tensor:
        """One real training window of shape (1, W, C), e.g. for tracing or export."""
        self.setup()
        return self.train_windows[:1].clone()

    def calibration_windows(self, n: int) -> np.ndarray:
        """Up to ``n`` training windows (float32), evenly spread over the training set."""
        self.setup()
        total = len(self.train_windows)
        idx = np.unique(np.linspace(0, total - 1, num=min(n, total)).round().astype(int))
        return self.train_windows.numpy()[idx].copy()
