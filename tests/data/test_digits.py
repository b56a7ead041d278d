"""Digits specifics; what every datamodule must do is in test_datamodule_contract.py."""

from __future__ import annotations

import numpy as np

from tinyexp.data.digits import DigitsDataModule


def _setup(**kwargs: object) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_split_sizes_and_value_range() -> None:
    dm = _setup()
    sizes = {k: len(v[1]) for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] / 1797 - 0.2) < 0.01 and abs(sizes["val"] / 1797 - 0.15) < 0.01
    x, _ = dm.test_arrays()
    assert len(x) == sizes["test"] and 0.0 <= x.min() and x.max() <= 1.0
    assert dm.num_classes == 10 and dm.in_channels == 1 and dm.image_size == 8


def test_splits_are_stratified() -> None:
    dm = _setup()
    overall = np.bincount(np.concatenate([y for _, y in dm.splits.values()]), minlength=10) / 1797
    for _, y in dm.splits.values():
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.01


def test_the_seed_draws_the_split() -> None:
    a, b = _setup(seed=7), _setup(seed=8)
    assert not np.array_equal(a.test_arrays()[1], b.test_arrays()[1])
