"""The datamodule contract: what the pipeline relies on, checked for every ``conf/dataset`` option.

One suite, each dataset a parameter (as optuna's shared sampler tests): a new YAML file under
``conf/dataset/`` is tested because it exists. The pipeline builds a datamodule with
``setup("fit")``, sizes the network from ``window``/``num_channels`` (anomaly) or
``in_channels``/``num_classes``/``image_size`` (classification), trains on the loaders, traces
and times ``example_input()``, calibrates quantizers on ``calibration_windows(n)`` and scores on
``segments`` or ``test_arrays()``. Dataset-specific checks stay in ``test_<dataset>.py``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from image_files import data_dir_overrides
from support import CONF, SKAB_DIR, compose

from tinyexp.config import constructor_kwargs
from tinyexp.data.skab_files import anomalous_files

DATASETS = sorted(path.stem for path in (CONF / "dataset").glob("*.yaml"))
# Smaller than the defaults, to keep the suite fast; a dataset missing here runs as configured.
SHRINK = {
    "sensors": ["dataset.train_steps=640", "dataset.test_steps=640"],
    "skab": ["dataset.train_rows=100", "dataset.window=20"],
    # The image sets read tiny fabricated files in their real formats (tests/image_files.py);
    # CIFAR's augmentation is off here, as augmented batches are no longer the stored images
    # (it is tested in tests/data/test_images.py).
    "mnist": data_dir_overrides("mnist"),
    "fashion_mnist": data_dir_overrides("fashion_mnist"),
    "cifar10": [*data_dir_overrides("cifar10"), "dataset.augment.crop_padding=0",
                "dataset.augment.hflip=false"],
    "cifar100": [*data_dir_overrides("cifar100"), "dataset.augment.crop_padding=0",
                 "dataset.augment.hflip=false"],
}
# SKAB's protocol scores each whole file, the anomaly-free head it trains on included; the
# other datasets hold their test data out entirely.
TEST_INCLUDES_TRAINING = {"skab"}
TASKS = ("anomaly", "classification")

pytestmark = [pytest.mark.parametrize("name", DATASETS), pytest.mark.usefixtures("single_thread")]


def _overrides(name: str, seed: int) -> list[str]:
    extra = []
    if name == "skab":
        if not anomalous_files(SKAB_DIR):
            pytest.skip(f"SKAB data not found in {SKAB_DIR} (set TINYEXP_SKAB_DIR to a copy)")
        extra = [f"dataset.data_dir={SKAB_DIR}"]
    return [f"dataset={name}", f"dataset.seed={seed}", *extra, *SHRINK.get(name, [])]


def _build(name: str, seed: int = 0):
    """A freshly built datamodule, as the pipeline builds it."""
    datamodule = instantiate(constructor_kwargs(compose(_overrides(name, seed)).dataset))
    datamodule.setup("fit")
    return datamodule


@cache
def _shared(name: str):
    """One built datamodule per dataset for the checks that only read it."""
    return _build(name)


def _inputs(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


def _epoch(loader) -> np.ndarray:
    """Every input of one pass over ``loader``, in order."""
    return torch.cat([_inputs(batch) for batch in loader]).numpy()


def _keys(samples: np.ndarray) -> set[bytes]:
    return {sample.tobytes() for sample in samples}


def _test_inputs(datamodule) -> tuple[np.ndarray, np.ndarray]:
    """All test inputs, and those that hold a labelled anomaly (none for classification)."""
    if datamodule.task == "classification":
        x, _ = datamodule.test_arrays()
        return x, x[:0]
    window, anomalous = datamodule.window, []
    for seg in datamodule.segments:
        # Test window i covers rows i .. i + window - 1.
        covers = np.lib.stride_tricks.sliding_window_view(np.asarray(seg.labels), window)
        anomalous.append(seg.test[covers.any(axis=1)])
    return (np.concatenate([seg.test for seg in datamodule.segments]),
            np.concatenate(anomalous))


def _test_data(datamodule) -> list[np.ndarray]:
    """Everything the evaluation reads: test inputs and labels, thresholding windows."""
    if datamodule.task == "classification":
        return list(datamodule.test_arrays())
    return [array for seg in datamodule.segments for array in (seg.train, seg.test, seg.labels)]


def test_the_config_and_the_class_agree_on_the_task(name):
    cfg = compose(_overrides(name, 0)).dataset
    datamodule = _shared(name)
    assert cfg.name == name
    assert datamodule.task == cfg.task and datamodule.task in TASKS
    if datamodule.task == "anomaly":  # the detection threshold the evaluation reads
        assert 0 < cfg.threshold_quantile <= 1 and cfg.threshold_scale > 0


def test_setup_builds_the_data_once(name):
    datamodule = _build(name)
    example, train = datamodule.example_input(), _epoch(datamodule.train_dataloader())
    for stage in ("fit", "validate", "test", None):  # Lightning calls it again inside fit
        datamodule.setup(stage)
    assert torch.equal(datamodule.example_input(), example)
    np.testing.assert_array_equal(_epoch(datamodule.train_dataloader()), train)


@pytest.mark.parametrize("split", ["train", "val"])
def test_loaders_yield_float32_inputs_shaped_like_the_example(name, split):
    datamodule = _shared(name)
    shape = tuple(datamodule.example_input().shape[1:])
    batch_size = compose(_overrides(name, 0)).dataset.batch_size
    batches = list(getattr(datamodule, f"{split}_dataloader")())
    assert batches, f"no {split} batches"
    total = 0
    for batch in batches:
        if datamodule.task == "anomaly":
            assert isinstance(batch, torch.Tensor)  # the window is its own target
            x = batch
        else:
            x, y = batch
            assert y.dtype == torch.int64 and y.shape == (len(x),)
            assert 0 <= int(y.min()) and int(y.max()) < datamodule.num_classes
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape
        assert 0 < len(x) <= batch_size
        total += len(x)
    assert len(_inputs(batches[0])) == min(batch_size, total)


def test_the_example_input_is_one_float32_training_sample(name):
    datamodule = _shared(name)
    example = datamodule.example_input()
    assert isinstance(example, torch.Tensor) and example.dtype == torch.float32
    assert example.shape[0] == 1 and example.ndim >= 3
    assert example.numpy()[0].tobytes() in _keys(_epoch(datamodule.train_dataloader()))


def test_calibration_windows_are_distinct_training_samples(name):
    datamodule = _shared(name)
    train = _epoch(datamodule.train_dataloader())
    shape = tuple(datamodule.example_input().shape[1:])
    for n, expected in ((5, 5), (len(train) + 10, len(train))):  # fewer if the set is smaller
        calibration = datamodule.calibration_windows(n)
        assert isinstance(calibration, np.ndarray) and calibration.dtype == np.float32
        assert calibration.shape == (expected, *shape)
        assert len(_keys(calibration)) == expected
        assert _keys(calibration) <= _keys(train)


def test_it_exposes_what_the_network_and_the_evaluation_read(name):
    datamodule = _shared(name)
    example = datamodule.example_input()
    if datamodule.task == "anomaly":
        window, channels = datamodule.window, datamodule.num_channels
        assert example.shape == (1, window, channels) and window >= 2  # metrics need W >= 2
        assert datamodule.segments
        labels = []
        for seg in datamodule.segments:
            assert seg.train.dtype == seg.test.dtype == np.float32
            assert seg.train.shape[1:] == seg.test.shape[1:] == (window, channels)
            assert len(seg.train) > 0  # its windows set the segment's threshold
            assert len(seg.test) == len(seg.labels) - window + 1
            assert set(np.unique(seg.labels)) <= {0, 1}
            labels.append(np.asarray(seg.labels))
        assert set(np.unique(np.concatenate(labels))) == {0, 1}  # F1 needs both
    else:
        size = datamodule.image_size
        assert example.shape == (1, datamodule.in_channels, size, size)
        x, y = datamodule.test_arrays()
        assert x.dtype == np.float32 and x.shape == (len(y), *example.shape[1:])
        assert y.dtype == np.int64 and y.ndim == 1
        assert set(np.unique(y)) == set(range(datamodule.num_classes))  # every class scored


def test_dataset_seed_decides_the_data_and_seed_does_not(name):
    first, again = _build(name, seed=1), _build(name, seed=1)
    for split in ("train", "val"):
        loaders = (getattr(dm, f"{split}_dataloader")() for dm in (first, again))
        np.testing.assert_array_equal(*(_epoch(loader) for loader in loaders))
    for one, other in zip(_test_data(first), _test_data(again), strict=True):
        np.testing.assert_array_equal(one, other)
    if "seed" in compose(_overrides(name, 1)).dataset:
        other = _build(name, seed=2)
        assert not np.array_equal(_epoch(first.train_dataloader()),
                                  _epoch(other.train_dataloader())), "seed 2 trains as seed 1"
    # The run's `seed` (initialisation, batch order) leaves the data set as it is.
    runs = [instantiate(constructor_kwargs(compose([*_overrides(name, 1), f"seed={s}"]).dataset))
            for s in (3, 4)]
    for dm in runs:
        dm.setup("fit")
    for one, other in zip(_test_data(runs[0]), _test_data(runs[1]), strict=True):
        np.testing.assert_array_equal(one, other)


def test_training_data_stays_out_of_validation_and_test_data(name):
    datamodule = _shared(name)
    train = _keys(_epoch(datamodule.train_dataloader()))
    val = _keys(_epoch(datamodule.val_dataloader()))
    test, anomalous = (_keys(samples) for samples in _test_inputs(datamodule))
    assert not train & val
    assert not (train | val) & anomalous, "a training sample holds a labelled anomaly"
    if name not in TEST_INCLUDES_TRAINING:
        assert not (train | val) & test
