"""The shared image datamodule: augmentation, subsets and splits, config checks, downloads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import tar_folder, write_cifar10, write_mnist
from support import ROOT, compose, run_cli

from tinyexp.config import validate
from tinyexp.data import download
from tinyexp.data.cifar import CIFAR10DataModule
from tinyexp.data.idx import MNISTDataModule
from tinyexp.data.images import augment_batch, balanced_subset, stratified_split
from tinyexp.schemas import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder, per_batch=20, n_test=20)
    return folder


def _epoch(dm) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(dm.train_dataloader())
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


# ----------------------------------------------------------------------------- augmentation


def test_a_crop_is_a_window_of_the_zero_padded_image_and_a_flip_mirrors_it():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = augment_batch(x, 2, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    windows = {(i, dy, dx, flip) for i in range(64) for dy in range(5) for dx in range(5)
               for flip in (False, True)
               if torch.equal(out[i], (lambda w: w.flip(-1) if flip else w)(
                   padded[i, :, dy:dy + 8, dx:dx + 8]))}
    assert {i for i, *_ in windows} == set(range(64))  # each image is one of them
    assert len({(dy, dx) for _, dy, dx, _ in windows}) > 10  # offsets vary
    assert {flip for *_, flip in windows} == {False, True}


def test_augmentation_is_deterministic_under_the_seed_and_a_no_op_when_off(cifar_dir):
    def build(seed, **augment):
        dm = CIFAR10DataModule(seed=seed, data_dir=str(cifar_dir), batch_size=32,
                               augment=augment)
        dm.setup()
        return dm

    plain = build(0)
    x, y = _epoch(plain)
    stored = {img.tobytes() for img in plain.splits["train"][0] / np.float32(255)}
    assert {img.numpy().tobytes() for img in x} == stored  # off: the stored images
    on = build(0, crop_padding=4, hflip=True)
    first, again = _epoch(on), _epoch(build(0, crop_padding=4, hflip=True))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(first[1], y)  # same order as without augmentation
    assert not torch.equal(first[0], x)
    assert not torch.equal(_epoch(build(1, crop_padding=4, hflip=True))[0], first[0])
    # Validation and test data are never augmented.
    val = torch.cat([b[0] for b in on.val_dataloader()])
    np.testing.assert_array_equal(val.numpy(), on.splits["val"][0] / np.float32(255))


# ----------------------------------------------------------------------------- subsets, splits


def test_a_balanced_subset_is_even_seeded_and_capped():
    labels = np.repeat(np.arange(10), [50] * 9 + [3])  # class 9 has only 3
    pick = balanced_subset(labels, 95, np.random.default_rng(0))
    assert len(pick) == 95 and len(set(pick)) == 95 and np.all(np.diff(pick) > 0)
    counts = np.bincount(labels[pick], minlength=10)
    assert counts[9] == 3 and set(counts[:9]) <= {10, 11}  # class 9's shortfall shared
    assert np.array_equal(pick, balanced_subset(labels, 95, np.random.default_rng(0)))
    assert not np.array_equal(pick, balanced_subset(labels, 95, np.random.default_rng(1)))
    assert len(balanced_subset(labels, 10_000, np.random.default_rng(0))) == len(labels)


def test_a_stratified_split_holds_out_each_class_share():
    labels = np.repeat(np.arange(4), [100, 40, 2, 1])
    kept, held = stratified_split(labels, 0.1, np.random.default_rng(0))
    assert not set(kept) & set(held) and len(kept) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=4).tolist() == [10, 4, 1, 0]


def test_train_samples_take_a_seeded_class_balanced_subset(tmp_path):
    write_mnist(tmp_path, n_train=300, n_test=100, gz=False)

    def build(seed):
        dm = MNISTDataModule(seed=seed, data_dir=str(tmp_path), train_samples=100,
                             test_samples=50, val_fraction=0.2)
        dm.setup()
        return dm

    dm = build(3)
    train_y, val_y = dm.splits["train"][1], dm.splits["val"][1]
    assert np.bincount(train_y).tolist() == [8] * 10 and np.bincount(val_y).tolist() == [2] * 10
    assert np.bincount(dm.test_arrays()[1]).tolist() == [5] * 10
    assert np.array_equal(build(3).splits["train"][0], dm.splits["train"][0])
    assert not np.array_equal(build(4).splits["train"][0], dm.splits["train"][0])


# ----------------------------------------------------------------------------- config checks


@pytest.fixture
def validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # validate() creates the cache folder here
    return lambda *overrides: validate(compose(["arch=custom_cnn", "logger=none", *overrides]))


@pytest.mark.parametrize(("name", "hint"), [
    ("mnist", "needs train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
              "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] in {d} (or {d}/MNIST/raw)"
              " (the folder does not exist); put them there or set dataset.download=true"),
    ("fashion_mnist", "or apt install dataset-fashion-mnist"),
    ("cifar10", "test_batch.bin in {d} (or {d}/cifar-10-batches-bin), "
                "or cifar-10-binary.tar.gz in {d}"),
    ("cifar100", "needs train.bin, test.bin in"),
])
def test_missing_files_give_one_line_saying_what_to_put_where(validated, tmp_path, name, hint):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        validated(f"dataset={name}", f"dataset.data_dir={missing}")
    message = str(err.value)
    assert message.startswith(f"dataset.data_dir: dataset={name} needs "), message
    assert hint.format(d=missing) in message and "\n" not in message


def test_partly_there_names_the_missing_files_and_download_true_passes(validated, tmp_path):
    write_mnist(tmp_path / "d", gz=True)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"\(missing: t10k-labels-idx1-ubyte\); put them"):
        validated("dataset=mnist", f"dataset.data_dir={tmp_path / 'd'}")
    specs = validated("dataset=mnist", f"dataset.data_dir={tmp_path / 'new'}",
                      "dataset.download=true")
    assert (tmp_path / "new").is_dir()  # checked writable; nothing fetched yet
    assert specs["dataset"].image_shape() == (1, 28, 28)


def test_a_null_data_dir_is_the_cache_folder(validated, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(download, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    folder = tmp_path / "xdg" / "tinyexp" / "datasets" / "fashion_mnist"
    with pytest.raises(ConfigError, match=r"set dataset\.data_dir to their folder") as err:
        validated("dataset=fashion_mnist")
    assert f" in {folder} " in str(err.value)
    write_mnist(folder)
    validated("dataset=fashion_mnist")


BAD = [
    (["dataset=mnist", "dataset.train_samples=15"], "dataset.train_samples", ">= 20"),
    (["dataset=cifar100", "dataset.train_samples=150"], "dataset.train_samples", ">= 200"),
    (["dataset=cifar100", "dataset.label=coarse", "dataset.test_samples=19"],
     "dataset.test_samples", ">= 20"),
    (["dataset=cifar100", "dataset.label=medium"], "dataset.label", "fine (100 classes)"),
    (["dataset=cifar10", "dataset.augment.crop_padding=32"], "dataset.augment.crop_padding",
     "[0, 32)"),
    (["dataset=mnist", "dataset.val_fraction=0"], "dataset.val_fraction", "(0, 1)"),
    (["dataset=mnist", "dataset.batch_size=0"], "dataset.batch_size", "> 0"),
    (["dataset=mnist", "dataset.seed=-1"], "dataset.seed", ">= 0"),
    (["dataset=mnist", "arch.channels=[4,4,4,4,4]"], "arch.channels", "at most 4"),
]


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD, ids=lambda v: str(v))
def test_bad_values_name_the_key(validated, overrides, key, hint):
    from image_files import data_dir_overrides

    name = overrides[0].split("=")[1]
    with pytest.raises(ConfigError) as err:
        validated(*overrides, *data_dir_overrides(name))
    assert str(err.value).startswith(f"{key}:") and hint in str(err.value), str(err.value)


def test_the_cli_reports_missing_files_as_bad_input(tmp_path):
    done = run_cli(["dataset=mnist", "dataset.data_dir=/nonexistent", "arch=custom_cnn"],
                   tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyexp: error: dataset.data_dir: "), lines


def test_the_schemas_import_neither_numpy_nor_torch():
    code = ("import sys, tinyexp.data.schemas, tinyexp.schemas; "
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- downloads


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path/served``: yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _serve_mnist(tmp_path, monkeypatch, base, wrong: str | None = None):
    written = write_mnist(tmp_path / "served", gz=True)
    sums = {p.name: _md5(p) for p in (tmp_path / "served").iterdir()}
    if wrong:
        sums[wrong] = "0" * 32
    monkeypatch.setitem(download.SOURCES, "mnist", (base, sums))
    return written


def test_download_fetches_and_checks_the_files(tmp_path, monkeypatch, server):
    written = _serve_mnist(tmp_path, monkeypatch, server)
    data = tmp_path / "data"
    dm = MNISTDataModule(data_dir=str(data), download=True)
    dm.setup()
    np.testing.assert_array_equal(dm.test_arrays()[1], written["test"][1])
    assert sorted(p.name for p in data.iterdir()) == sorted(download.SOURCES["mnist"][1])


def test_a_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch, server):
    _serve_mnist(tmp_path, monkeypatch, server, wrong="t10k-images-idx3-ubyte.gz")
    data = tmp_path / "data"
    with pytest.raises(download.DownloadError, match=r"t10k-images-idx3-ubyte\.gz: md5 \w+ is "
                                                     r"not the published 0{32}"):
        MNISTDataModule(data_dir=str(data), download=True).setup()
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in data.iterdir()}
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temp file


def test_an_unreachable_file_and_an_interrupt_keep_nothing(tmp_path, monkeypatch, server):
    monkeypatch.setitem(download.SOURCES, "mnist", (server, download.SOURCES["mnist"][1]))
    data = tmp_path / "data"
    with pytest.raises(download.DownloadError, match=r"cannot fetch .*train-images.*404"):
        MNISTDataModule(data_dir=str(data), download=True).setup()

    class Cut:  # a response that is interrupted (Ctrl-C) after its first chunk
        chunks = [b"x" * 100]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size):
            if self.chunks:
                return self.chunks.pop()
            raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Cut())
    with pytest.raises(KeyboardInterrupt):
        MNISTDataModule(data_dir=str(data), download=True).setup()
    assert not list(data.iterdir())


def test_download_fetches_and_extracts_the_cifar_tarball(tmp_path, monkeypatch, server):
    written = write_cifar10(tmp_path / "src", per_batch=4, n_test=10)
    tarball = tar_folder(tmp_path / "src" / "cifar-10-batches-bin",
                         tmp_path / "served" / "cifar-10-binary.tar.gz")
    monkeypatch.setitem(download.SOURCES, "cifar10",
                        (server, {tarball.name: _md5(tarball)}))
    data = tmp_path / "data"
    dm = CIFAR10DataModule(data_dir=str(data), download=True)
    dm.setup()
    np.testing.assert_array_equal(dm.test_arrays()[1], written["test"][1])
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-bin", tarball.name]
