"""Sensors specifics; what every datamodule must do is in test_datamodule_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyexp.data.sensors import CHANNELS, KINDS, SensorsDataModule, generate_pump_series
from tinyexp.data.windows import make_windows


@pytest.fixture(scope="module")
def dm() -> SensorsDataModule:
    module = SensorsDataModule()
    module.setup("fit")
    return module


def test_make_windows_layout() -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    w = make_windows(x, window=4, stride=3)
    assert w.shape == (3, 4, 2) and w.dtype == np.float32 and w.flags.c_contiguous
    np.testing.assert_array_equal(w[1], x[3:7])
    assert make_windows(x, window=11).shape == (0, 11, 2)


def test_the_seed_draws_the_test_series_and_its_anomalies() -> None:
    a, c = (SensorsDataModule(seed=s) for s in (3, 4))
    for module in (a, c):
        module.setup("fit")
    assert not np.array_equal(a.segments[0].test, c.segments[0].test)
    assert not np.array_equal(a.segments[0].labels, c.segments[0].labels)


def test_shapes_and_channels(dm: SensorsDataModule) -> None:
    assert dm.num_channels == 8 and dm.window == 32
    assert tuple(dm.channels) == CHANNELS and CHANNELS[0] == "Accelerometer1RMS"
    total = (4000 - 32) // 2 + 1
    n_val = round(0.2 * total)
    assert dm.val_windows.shape == (n_val, 32, 8)
    # Training windows that share rows with the validation tail are dropped.
    assert dm.train_windows.shape == (total - n_val - 16, 32, 8)
    (seg,) = dm.segments
    assert seg.name == "sensors"
    assert seg.train.shape == (total, 32, 8)
    assert seg.test.shape == (4000 - 31, 32, 8)
    assert seg.labels.shape == (4000,)


def test_setup_is_idempotent(dm: SensorsDataModule) -> None:
    before = dm.train_windows
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_windows is before


def test_validation_windows_come_in_order(dm: SensorsDataModule) -> None:
    val = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val, dm.val_windows[:64], rtol=0, atol=0)


def test_several_anomalies_of_all_kinds() -> None:
    data = generate_pump_series(seed=0, num_anomalies=8)
    assert {a.kind for a in data.anomalies} == set(KINDS)
    starts = np.flatnonzero(np.diff(np.r_[0, data.labels]) == 1)
    assert len(starts) == 8
    assert 0.1 < data.labels.mean() < 0.6


def test_train_series_is_free_of_anomalies() -> None:
    # Faults are drawn from their own stream: the training series must not change at all
    # when anomalies are injected, and the test series only from the first anomaly onwards.
    faulty = generate_pump_series(seed=2, num_anomalies=8)
    clean = generate_pump_series(seed=2, num_anomalies=0)
    np.testing.assert_array_equal(faulty.train, clean.train)
    assert clean.labels.sum() == 0
    first = min(a.start for a in faulty.anomalies)
    np.testing.assert_array_equal(faulty.test[:first], clean.test[:first])


def test_anomalies_visibly_shift_the_data() -> None:
    faulty = generate_pump_series(seed=0)
    clean = generate_pump_series(seed=0, num_anomalies=0)
    scale = faulty.train.std(axis=0)
    shift = np.abs(faulty.test - clean.test) / scale  # deviation from the fault-free run
    inside = shift[faulty.labels == 1].mean()
    outside = shift[faulty.labels == 0].mean()
    assert inside > 5 * outside
    # And directly on the scaled data: anomalous points sit further from the training mean.
    z = np.abs((faulty.test - faulty.train.mean(axis=0)) / scale).mean(axis=1)
    assert z[faulty.labels == 1].mean() > z[faulty.labels == 0].mean()
    # Each fault kind shows up where expected.
    for a in faulty.anomalies:
        rows = slice(a.start, a.stop)
        if a.kind == "valve_closure":
            assert (faulty.test[rows, 7] < clean.test[rows, 7]).mean() > 0.9  # flow drops
            assert (faulty.test[rows, 3] > clean.test[rows, 3]).mean() > 0.8  # pressure rises
        elif a.kind == "leak":
            assert (faulty.test[rows, 7] < clean.test[rows, 7]).mean() > 0.9
            assert (faulty.test[rows, 3] < clean.test[rows, 3]).mean() > 0.8
        elif a.kind == "rotor_imbalance":
            assert (faulty.test[rows, 0] > clean.test[rows, 0]).mean() > 0.8
        elif a.kind == "stuck_sensor":
            assert np.ptp(faulty.test[rows, a.channel]) == 0.0


def test_generation_errors_on_too_short_test() -> None:
    with pytest.raises(ValueError, match="too short"):
        generate_pump_series(seed=0, test_steps=300, num_anomalies=8)
