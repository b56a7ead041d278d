"""The SKAB benchmark (Skoltech Anomaly Benchmark) read from its own folder layout.

Protocol: each anomalous file is standard-scaled with the statistics of its first
``train_rows`` rows, whose windows form its training set. One shared network is trained on
the pooled training windows of all files; thresholds stay per file (one AnomalySegment each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyexp.data.skab_files import CHANNELS, anomalous_files, check_data_dir, check_skab_csv
from tinyexp.data.windows import AnomalySegment, SeriesDataModule, make_windows

__all__ = ["CHANNELS", "SkabDataModule", "check_data_dir", "read_skab_csv"]


def read_skab_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SKAB CSV.

    Returns:
        (values (T, 8) float64 in CHANNELS order, anomaly labels (T,) int64).

    Raises:
        ConfigError: (a ValueError) keyed by the file, naming row and column, for anything
            ``check_skab_csv`` rejects.
        ValueError: naming the file, if it has no data rows or pandas disagrees with the check.
    """
    import pandas as pd  # heavy; only needed when data is actually read

    # The stdlib check first (a few ms a file): pandas reads a row short of a cell by shifting
    # the rest left, and names neither file nor row when it fails.
    checked = np.frombuffer(check_skab_csv(path), dtype=np.uint8)
    try:
        df = pd.read_csv(path, sep=";", index_col="datetime")
        values = df[list(CHANNELS)].to_numpy(np.float64)
        labels = df["anomaly"].to_numpy(np.float64)
    except (ValueError, KeyError) as err:  # pandas' parse errors are ValueErrors
        raise ValueError(f"{path}: not readable as a SKAB CSV ({err})") from None
    if len(values) == 0:
        raise ValueError(f"{path}: has a header but no data rows")
    # The two readers must agree; should they not, stop rather than train on either reading.
    if not np.isfinite(values).all() or not np.array_equal(labels, checked):
        raise ValueError(f"{path}: pandas read it differently from the csv module "
                         f"({len(labels)} rows vs {len(checked)}, or non-finite values)")
    return values, labels.astype(np.int64)


def _scale(values: np.ndarray, train_rows: int) -> np.ndarray:
    """Standard-scale with statistics of the first ``train_rows`` rows (like StandardScaler)."""
    head = values[:train_rows]
    mean, std = head.mean(axis=0), head.std(axis=0)
    std[std == 0] = 1.0  # a constant channel stays centred rather than becoming inf/nan
    return (values - mean) / std


class SkabDataModule(SeriesDataModule):
    """SKAB windows: pooled per-file training windows, one evaluation segment per file.

    Validation is a seeded random share of the pooled training windows so that every file
    is represented; the training part of a file is only ``train_rows`` rows, too short to
    give up a chronological tail of each.
    """

    def __init__(
        self,
        data_dir: str,
        seed: int = 0,
        window: int = 60,
        train_rows: int = 400,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        folders: list[str] | None = None,
    ) -> None:
        super().__init__(seed=seed, window=window, val_fraction=val_fraction, batch_size=batch_size)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.train_rows = train_rows
        self.folders = list(folders) if folders is not None else None
        self.channels = list(CHANNELS)

    def prepare_data(self) -> None:
        """Nothing to download; only check that the data is there."""
        check_data_dir(self.data_dir, self.folders)

    def _load(self) -> tuple[np.ndarray, np.ndarray, list[AnomalySegment]]:
        check_data_dir(self.data_dir, self.folders)
        root = Path(self.data_dir)
        segments = []
        for path in anomalous_files(root, self.folders):
            values, labels = read_skab_csv(path)
            if len(values) < self.train_rows + self.window:
                raise ValueError(f"{path}: {len(values)} data rows, need at least "
                                 f"{self.train_rows + self.window}: train_rows={self.train_rows} "
                                 f"to train on, then window={self.window} for one test window")
            scaled = _scale(values, self.train_rows)
            segments.append(
                AnomalySegment(
                    name=path.relative_to(root).with_suffix("").as_posix(),
                    train=make_windows(scaled[: self.train_rows], self.window, 1),
                    test=make_windows(scaled, self.window, 1),
                    labels=labels,
                )
            )

        pooled = np.concatenate([s.train for s in segments])
        order = np.random.default_rng(self.seed).permutation(len(pooled))
        n_val = int(round(self.val_fraction * len(pooled)))
        # Sorted indices keep each part in file/time order; the loader shuffles training anyway.
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        return pooled[train_idx], pooled[val_idx], segments
