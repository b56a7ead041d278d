"""MNIST and Fashion-MNIST: the IDX reader on fabricated files, and Debian's real Fashion-MNIST."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest
from image_files import IDX_NAMES, idx_bytes, write_mnist
from support import compose

from tinyexp.config import validate
from tinyexp.data import download
from tinyexp.data.idx import FashionMNISTDataModule, MNISTDataModule, read_idx, read_split
from tinyexp.schemas import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")
TRAIN_IMAGES, TRAIN_LABELS = IDX_NAMES["train", "images"], IDX_NAMES["train", "labels"]


def _sorted_bytes(images: np.ndarray) -> list[bytes]:
    return sorted(image.tobytes() for image in images)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_pixels_and_labels_round_trip_exactly(tmp_path, gz):
    written = write_mnist(tmp_path, n_train=60, n_test=20, gz=gz)
    images, labels = read_split(tmp_path / (TRAIN_IMAGES + ".gz" * gz),
                                tmp_path / (TRAIN_LABELS + ".gz" * gz))
    assert images.dtype == np.uint8 and images.shape == (60, 1, 28, 28)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images[:, 0], written["train"][0])
    np.testing.assert_array_equal(labels, written["train"][1])

    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=16)
    dm.setup()
    x, y = dm.test_arrays()  # the official test files, in their order
    np.testing.assert_array_equal(y, written["test"][1])
    np.testing.assert_array_equal(x, written["test"][0][:, None] / np.float32(255))
    train_val = np.concatenate([dm.splits["train"][0], dm.splits["val"][0]])
    assert _sorted_bytes(train_val) == _sorted_bytes(written["train"][0][:, None])


def test_torchvisions_raw_folder_is_found_and_plain_files_win(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_mnist(raw, gz=True, seed=1)
    written = write_mnist(raw, gz=False, seed=2)  # torchvision keeps both; plain reads faster
    found = download.find_files("fashion_mnist", tmp_path)
    assert found is not None and all(path.parent == raw for path in found.values())
    assert all(path.suffix != ".gz" for path in found.values())
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    dm.setup()
    np.testing.assert_array_equal(dm.test_arrays()[1], written["test"][1])


def _damage(tmp_path, name, data, gz=False):
    path = tmp_path / (name + ".gz" * gz)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


IMAGES = np.zeros((4, 28, 28), dtype=np.uint8)
DAMAGED = {
    "wrong magic": (idx_bytes(IMAGES)[:2] + b"\x08\x01" + idx_bytes(IMAGES)[4:], "magic number"),
    "truncated": (idx_bytes(IMAGES)[:-10], "truncated or damaged"),
    "header only half there": (idx_bytes(IMAGES)[:9], "not even its header"),
    "empty": (b"", "magic number None"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_file_is_rejected_naming_it(tmp_path, case):
    data, hint = DAMAGED[case]
    path = _damage(tmp_path, TRAIN_IMAGES, data)
    with pytest.raises(ConfigError, match=hint) as err:
        read_idx(path, "images")
    assert str(err.value).startswith(f"{path}: ")


def test_a_truncated_gzip_file_is_rejected_naming_it(tmp_path):
    path = tmp_path / (TRAIN_IMAGES + ".gz")
    path.write_bytes(gzip.compress(idx_bytes(IMAGES))[:-12])
    with pytest.raises(ConfigError, match=r"not a complete gzip file") as err:
        read_idx(path, "images")
    assert str(err.value).startswith(str(path))


def test_images_and_labels_must_agree(tmp_path):
    write_mnist(tmp_path, n_train=20, gz=False)
    labels = _damage(tmp_path, TRAIN_LABELS, idx_bytes(np.zeros(19, dtype=np.uint8)))
    with pytest.raises(ConfigError, match=r"holds 19 labels for the 20 images"):
        read_split(tmp_path / TRAIN_IMAGES, labels)
    _damage(tmp_path, TRAIN_LABELS, idx_bytes(np.full(20, 10, dtype=np.uint8)))
    with pytest.raises(ConfigError, match=r"holds label 10; classes are 0..9"):
        read_split(tmp_path / TRAIN_IMAGES, labels)
    small = _damage(tmp_path, TRAIN_IMAGES, idx_bytes(np.zeros((20, 8, 8), dtype=np.uint8)))
    with pytest.raises(ConfigError, match=r"holds 8x8 images, expected 28x28"):
        read_split(small, labels)


def test_validation_rejects_a_file_with_a_wrong_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path, gz=True)
    bad = _damage(tmp_path, TRAIN_LABELS, idx_bytes(IMAGES), gz=True)  # images as labels
    cfg = compose(["dataset=mnist", "arch=custom_cnn", "logger=none",
                   f"dataset.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: .*not an IDX labels") as err:
        validate(cfg)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not download.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_fashion_mnist_is_the_offline_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = compose(["dataset=fashion_mnist", "arch=custom_cnn", "logger=none"])
    assert cfg.dataset.data_dir is None
    assert validate(cfg)["dataset"].image_shape() == (1, 28, 28)
    start = time.perf_counter()
    dm = FashionMNISTDataModule()
    dm.setup()
    seconds = time.perf_counter() - start
    sizes = {split: len(y) for split, (_, y) in dm.splits.items()}
    assert sizes["train"] + sizes["val"] == 60000 and sizes["test"] == 10000
    assert sizes["val"] == 6000  # 10% of each class's 6,000
    assert dm.example_input().shape == (1, 1, 28, 28)
    assert np.bincount(dm.test_arrays()[1]).tolist() == [1000] * 10
    assert seconds < 3, f"setup took {seconds:.1f} s"
