"""CIFAR-10/100: the binary-version reader, folder layouts and tarball, on fabricated files."""

from __future__ import annotations

import numpy as np
import pytest
from image_files import cifar_bytes, tar_folder, write_cifar10, write_cifar100
from support import compose

from tinyexp.config import validate
from tinyexp.data.cifar import CIFAR10DataModule, CIFAR100DataModule, read_cifar
from tinyexp.schemas import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")
NO_AUGMENT = {"crop_padding": 0, "hflip": False}


def _sorted_bytes(images: np.ndarray) -> list[bytes]:
    return sorted(image.tobytes() for image in images)


def _train_and_val(dm) -> np.ndarray:
    return np.concatenate([dm.splits["train"][0], dm.splits["val"][0]])


@pytest.mark.parametrize("at", ["parent", "folder"])
def test_cifar10_round_trips_from_the_folder_or_its_parent(tmp_path, at):
    written = write_cifar10(tmp_path, per_batch=10, n_test=20)
    data_dir = tmp_path if at == "parent" else tmp_path / "cifar-10-batches-bin"
    dm = CIFAR10DataModule(data_dir=str(data_dir), augment=NO_AUGMENT)
    dm.setup()
    x, y = dm.test_arrays()
    np.testing.assert_array_equal(y, written["test"][1])
    np.testing.assert_array_equal(x, written["test"][0] / np.float32(255))
    assert _sorted_bytes(_train_and_val(dm)) == _sorted_bytes(written["train"][0])
    assert (dm.in_channels, dm.image_size, dm.num_classes) == (3, 32, 10)


def test_the_reader_keeps_the_rgb_planes_and_the_labels(tmp_path):
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    images[0, 0, 1, 2], images[1, 2, 31, 0] = 7, 9  # red (row 1, col 2); blue (row 31, col 0)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(cifar_bytes(images, np.array([3, 8])))
    x, y = read_cifar(path)
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 8] and y.dtype == np.int64


@pytest.mark.parametrize(("label", "classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_reads_fine_or_coarse_labels(tmp_path, label, classes):
    written = write_cifar100(tmp_path, n_train=200, n_test=100)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), label=label, augment=NO_AUGMENT)
    dm.setup()
    x, y = dm.test_arrays()
    np.testing.assert_array_equal(y, written["test"][2 if label == "fine" else 1])
    np.testing.assert_array_equal(x, written["test"][0] / np.float32(255))
    assert dm.num_classes == classes and set(np.unique(y)) == set(range(classes))
    assert _sorted_bytes(_train_and_val(dm)) == _sorted_bytes(written["train"][0])


def test_the_tarball_is_extracted_once_and_atomically(tmp_path, monkeypatch):
    source = tmp_path / "source"
    written = write_cifar10(source, per_batch=4, n_test=10)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tar_folder(source / "cifar-10-batches-bin", data_dir / "cifar-10-binary.tar.gz",
               extra={"cifar-10-batches-bin/readme.html": b"<html/>"})
    monkeypatch.chdir(tmp_path)
    validate(compose(["dataset=cifar10", "arch=custom_cnn", "logger=none",
                      f"dataset.data_dir={data_dir}"]))  # a tarball is enough

    dm = CIFAR10DataModule(data_dir=str(data_dir))
    dm.setup()
    np.testing.assert_array_equal(dm.test_arrays()[1], written["test"][1])
    extracted = data_dir / "cifar-10-batches-bin"
    assert sorted(p.name for p in extracted.iterdir()) == sorted(
        p.name for p in (source / "cifar-10-batches-bin").iterdir())  # not readme.html
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-bin",
                                                          "cifar-10-binary.tar.gz"]
    stamp = (extracted / "test_batch.bin").stat().st_mtime_ns
    CIFAR10DataModule(data_dir=str(data_dir)).setup()
    assert (extracted / "test_batch.bin").stat().st_mtime_ns == stamp


def test_a_damaged_tarball_is_named_and_leaves_nothing_behind(tmp_path):
    source = tmp_path / "source"
    write_cifar100(source, n_train=200)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tarball = tar_folder(source / "cifar-100-binary", data_dir / "cifar-100-binary.tar.gz")
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cannot be read as a gzipped tar archive") as err:
        CIFAR100DataModule(data_dir=str(data_dir)).setup()
    assert str(err.value).startswith(f"{tarball}: ")
    leftovers = [p for p in data_dir.rglob("*") if p.is_file() and p != tarball]
    assert not leftovers and not [p for p in data_dir.iterdir() if p.name.startswith(".")]


def test_a_tarball_without_the_files_is_refused(tmp_path):
    other = tmp_path / "cifar-100-binary"
    other.mkdir()
    (other / "train.bin").write_bytes(b"")  # no test.bin
    tar_folder(other, tmp_path / "cifar-100-binary.tar.gz")
    (other / "train.bin").unlink()
    other.rmdir()
    with pytest.raises(ConfigError, match=r"holds no cifar-100-binary/test.bin"):
        CIFAR100DataModule(data_dir=str(tmp_path)).setup()


def test_damaged_files_are_rejected_naming_them(tmp_path, monkeypatch):
    write_cifar10(tmp_path, per_batch=4, n_test=10)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="not a whole number of 3073-byte records") as err:
        read_cifar(batch)
    assert str(err.value).startswith(f"{batch}: ")
    monkeypatch.chdir(tmp_path)
    cfg = compose(["dataset=cifar10", "arch=custom_cnn", "logger=none",
                   f"dataset.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: .*data_batch_3\.bin: \d+ bytes"):
        validate(cfg)  # the size is checked before anything trains
    batch.write_bytes(cifar_bytes(np.zeros((1, 3, 32, 32), np.uint8), np.array([10])))
    with pytest.raises(ConfigError, match=r"holds label 10 .* classes are 0..9"):
        read_cifar(batch)
