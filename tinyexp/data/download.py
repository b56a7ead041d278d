"""Where the image data sets' files live and how they get there (standard library only).

Each data set has a :class:`Layout`: the files its reader needs, the sub-folders of ``data_dir``
they may sit in (the folder a tarball extracts to, torchvision's ``MNIST/raw``) and the tarball
that holds them. :func:`find_files` looks them up without reading them (config validation calls
it on every start); :func:`prepare` makes them present: it extracts a tarball found in
``data_dir`` or, with ``download``, fetches the files from their standard sources and checks
them against the published md5 sums. Every file lands under a temporary name and is renamed
into place, so an interrupted or failed download leaves nothing half-written behind; one lock
per folder keeps parallel jobs from fetching the same files twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tinyexp.checks import ConfigError
from tinyexp.files import atomic_write, file_lock

log = logging.getLogger(__name__)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Debian's `dataset-fashion-mnist` package: the four gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Layout:
    """The files a data set's reader needs and where under ``data_dir`` they may be."""

    files: tuple[str, ...]
    folders: tuple[str, ...] = ()  # sub-folders of data_dir tried after data_dir itself
    gzip: bool = False             # each file may also be gzipped: <name>.gz
    tarball: str | None = None     # an archive of folders[0]/<files>, extracted on first use


LAYOUTS = {
    "mnist": Layout(IDX_FILES, ("MNIST/raw",), gzip=True),
    "fashion_mnist": Layout(IDX_FILES, ("FashionMNIST/raw",), gzip=True),
    "cifar10": Layout((*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"),
                      ("cifar-10-batches-bin",), tarball="cifar-10-binary.tar.gz"),
    "cifar100": Layout(("train.bin", "test.bin"), ("cifar-100-binary",),
                       tarball="cifar-100-binary.tar.gz"),
}

# Standard sources and their published md5 sums: MNIST and Fashion-MNIST as in torchvision's
# datasets/mnist.py (MNIST from PyTorch's ossci-datasets mirror of LeCun's files), CIFAR's binary
# versions as listed on https://www.cs.toronto.edu/~kriz/cifar.html.
SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",
                {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",
                 {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"}),
}
DOWNLOAD_TIMEOUT_S = 60.0


class DownloadError(OSError):
    """A file could not be fetched, or what came does not match its published checksum."""


# ----------------------------------------------------------------------------- finding files


def default_data_dir(name: str) -> Path:
    """The folder ``data_dir: null`` stands for: Debian's Fashion-MNIST when installed, else
    ``$XDG_CACHE_HOME/tinyexp/datasets/<name>`` (``~/.cache/...``)."""
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "tinyexp" / "datasets" / name


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` as a path (``~`` expanded), or the default folder when it is None."""
    return default_data_dir(name) if data_dir is None else Path(data_dir).expanduser()


def _candidates(layout: Layout, root: Path) -> list[Path]:
    return [root, *(root / folder for folder in layout.folders)]


def _present(layout: Layout, folder: Path, file: str) -> Path | None:
    # The plain file first: it reads faster than its gzipped twin (torchvision keeps both).
    for path in (folder / file, *([folder / f"{file}.gz"] if layout.gzip else [])):
        if path.is_file():
            return path
    return None


def find_files(name: str, root: Path) -> dict[str, Path] | None:
    """Each file of the data set ``name`` -> its path, all from one folder, or None."""
    layout = LAYOUTS[name]
    for folder in _candidates(layout, root):
        found = {file: _present(layout, folder, file) for file in layout.files}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def tarball_of(name: str, root: Path) -> Path | None:
    """The data set's tarball in ``root`` if it is there."""
    tarball = LAYOUTS[name].tarball
    return root / tarball if tarball and (root / tarball).is_file() else None


def missing_message(name: str, root: Path, *, default: bool = False) -> str:
    """One line: which files are needed where, which are missing, and the ways to get them."""
    layout = LAYOUTS[name]
    suffix = "[.gz]" if layout.gzip else ""
    needs = ", ".join(f"{file}{suffix}" for file in layout.files)
    where = f"{root}" + (f" (or {root / layout.folders[0]})" if layout.folders else "")
    if layout.tarball:
        needs = f"{needs} in {where}, or {layout.tarball} in {root}"
    else:
        needs = f"{needs} in {where}"
    if root.is_dir():  # name the missing files of the folder closest to complete
        folder = max(_candidates(layout, root), key=lambda f: sum(
            _present(layout, f, file) is not None for file in layout.files))
        absent = [file for file in layout.files if _present(layout, folder, file) is None]
        state = f"missing: {', '.join(absent)}"
    else:
        state = "the folder does not exist"
    ways = ["put them there", "set dataset.download=true"]
    if default:
        ways.insert(1, "set dataset.data_dir to their folder")
    if name == "fashion_mnist":
        ways.append("apt install dataset-fashion-mnist (used when dataset.data_dir is null)")
    return (f"dataset={name} needs {needs} ({state}); "
            f"{', '.join(ways[:-1])} or {ways[-1]}")


# ----------------------------------------------------------------------------- making them present


def prepare(name: str, root: Path, *, download: bool = False) -> dict[str, Path] | None:
    """The data set's files, after extracting its tarball or downloading them if needed.

    Returns:
        What :func:`find_files` returns: None if the files are still not there (no tarball,
        ``download`` false).

    Raises:
        DownloadError: a file could not be fetched or fails its checksum (nothing is kept).
        ConfigError: the tarball is damaged (keyed by its path).
    """
    found = find_files(name, root)
    if found or not (download or tarball_of(name, root)):
        return found
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    # The lock lives in the temp folder, not among the user's data files.
    with file_lock(Path(tempfile.gettempdir()) / f"tinyexp-data-{digest}.lock"):
        found = find_files(name, root)  # another job may have done it meanwhile
        if found:
            return found
        layout = LAYOUTS[name]
        if download and layout.tarball is None:
            base, sums = SOURCES[name]
            for file in layout.files:
                if _present(layout, root, file) is None:
                    fetch(f"{base}{file}.gz", root / f"{file}.gz", sums[f"{file}.gz"])
        elif layout.tarball is not None:
            if download and tarball_of(name, root) is None:
                base, sums = SOURCES[name]
                fetch(f"{base}{layout.tarball}", root / layout.tarball, sums[layout.tarball])
            extract(name, root / layout.tarball, root)
        return find_files(name, root)


def fetch(url: str, dest: Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` if its md5 sum is ``md5``; on any failure nothing is kept."""
    from urllib.error import URLError
    from urllib.request import urlopen

    def write(tmp: Path) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, tmp.open("wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (URLError, OSError) as err:
            code = getattr(err, "code", None)  # an HTTPError's status
            reason = f"HTTP {code} {err.reason}" if code else getattr(err, "reason", None) or err
            raise DownloadError(f"cannot fetch {url} ({reason}); put the file in {dest.parent} "
                                f"by hand or try again") from None
        if digest.hexdigest() != md5:
            raise DownloadError(f"{url}: md5 {digest.hexdigest()} is not the published {md5} "
                                f"(a damaged or changed download; nothing was kept): try again, "
                                f"or put the file in {dest.parent} by hand")

    log.info("downloading %s to %s", url, dest)
    return atomic_write(dest, write)


def extract(name: str, tarball: Path, root: Path) -> Path:
    """Extract the data set's files from ``tarball`` into ``root/<folder>``, each renamed into
    place once complete; only the known files are read (no paths from the archive are used)."""
    import tarfile
    import zlib

    layout = LAYOUTS[name]
    folder, wanted = layout.folders[0], set(layout.files)
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder}.", suffix=".tmp"))
    log.info("extracting %s to %s", tarball, target)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if member.isfile() and parts[-2:-1] == (folder,) and parts[-1] in wanted:
                    source = archive.extractfile(member)
                    with source, (tmp / parts[-1]).open("wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
        absent = sorted(wanted - {path.name for path in tmp.iterdir()})
        if absent:
            raise ConfigError(str(tarball), f"holds no {folder}/{absent[0]}: not the "
                                            f"{layout.tarball} of dataset={name}")
        for path in tmp.iterdir():
            os.replace(path, target / path.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ConfigError(str(tarball), f"cannot be read as a gzipped tar archive ({err}); "
                                        f"delete it and download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
