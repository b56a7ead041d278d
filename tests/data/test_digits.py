from __future__ import annotations

import numpy as np
import torch

from tinyexp.data.digits import DigitsDataModule


def _setup(**kwargs: object) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_sizes_and_types() -> None:
    dm = _setup()
    sizes = {k: len(v[1]) for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] / 1797 - 0.2) < 0.01 and abs(sizes["val"] / 1797 - 0.15) < 0.01
    x, y = dm.test_arrays()
    assert x.shape == (sizes["test"], 1, 8, 8) and x.dtype == np.float32
    assert y.dtype == np.int64 and 0.0 <= x.min() and x.max() <= 1.0
    assert dm.task == "classification" and dm.num_classes == 10
    assert dm.in_channels == 1 and dm.image_size == 8
    assert dm.example_input().shape == (1, 1, 8, 8)
    assert dm.calibration_windows(50).shape == (50, 1, 8, 8)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (64, 1, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_splits_are_stratified_and_disjoint() -> None:
    dm = _setup()
    overall = np.bincount(np.concatenate([y for _, y in dm.splits.values()]), minlength=10) / 1797
    for _, y in dm.splits.values():
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.01
    # The 1,797 images are all distinct, so disjoint splits share no image bytes.
    keys = {k: {img.tobytes() for img in x} for k, (x, _) in dm.splits.items()}
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert not keys["train"] & keys["val"]


def test_deterministic_from_seed() -> None:
    a, b, c = _setup(seed=7), _setup(seed=7), _setup(seed=8)
    np.testing.assert_array_equal(a.test_arrays()[0], b.test_arrays()[0])
    assert not np.array_equal(a.test_arrays()[1], c.test_arrays()[1])
    xa, ya = next(iter(a.train_dataloader()))
    xb, yb = next(iter(b.train_dataloader()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
