"""Locating and checking SKAB files on disk (stdlib only, so config validation can call it cheaply).

``check_data_dir`` runs on every job start: with ``window`` and ``train_rows`` it reads every CSV
the run would read with the ``csv`` module (about 0.1 s for the 34 files of SKAB v0.9) and
rejects the first bad file with a one-line ``ConfigError`` keyed by that file's path, instead of
a pandas traceback deep in ``setup()`` or a run that ends with null metrics.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import logging
import math
from pathlib import Path

from tinyexp.schemas import ConfigError

log = logging.getLogger(__name__)

# SKAB's eight sensor channels, in the benchmark's column order.
CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
# The columns a file must have; anything else (SKAB's own `changepoint`) is read past, as pandas
# selects columns by name. `datetime` is pandas' index column, so it must be there, but its
# cells are never parsed.
REQUIRED_COLUMNS = ("datetime", *CHANNELS, "anomaly")

ANOMALOUS_FOLDERS = ("valve1", "valve2", "other")

# SKAB writes labels as 0.0/1.0; plain 0/1 reads the same. Parsed values are checked too.
_LABELS = {"0": 0, "0.0": 0, "1": 1, "1.0": 1}
_ALLOWED_LABELS = "0 or 1, also written 0.0 and 1.0 as SKAB does"


def _numeric_key(path: Path) -> tuple[int, int | str]:
    # 2.csv before 10.csv; non-numeric names (if any) after the numbered ones.
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)


def anomalous_files(data_dir: str | Path, folders: list[str] | None = None) -> list[Path]:
    """CSV files of the anomalous SKAB folders, folder by folder, numerically sorted.

    Args:
        data_dir: SKAB root holding ``valve1/``, ``valve2/``, ``other/`` (any subset).
        folders: folders to use; None means all of ANOMALOUS_FOLDERS that exist.

    Returns:
        Paths in a stable order (e.g. valve1/0.csv, valve1/1.csv, ..., valve1/10.csv).
    """
    root = Path(data_dir)
    files: list[Path] = []
    for folder in folders if folders is not None else ANOMALOUS_FOLDERS:
        files.extend(sorted((root / folder).glob("*.csv"), key=_numeric_key))
    return files


# ----------------------------------------------------------------------------- one file


def _decode(path: Path, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(str(path), "is UTF-16 text; SKAB files are UTF-8 (save it as UTF-8 CSV)")
    try:
        return raw.decode("utf-8-sig")  # pandas drops a UTF-8 byte-order mark too
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(str(path), f"is not UTF-8 text: byte 0x{raw[err.start]:02x} at byte "
                          f"offset {err.start} (line {line}); SKAB files are UTF-8") from None


def _header_columns(path: Path, header: list[str], line: int) -> list[int]:
    """Indices of REQUIRED_COLUMNS in ``header`` (first found on file line ``line``)."""
    key = str(path)
    if len(header) == 1:
        for sep, name in ((",", "','"), ("\t", "tabs")):
            if sep in header[0]:
                raise ConfigError(key, f"line {line} (header): separated by {name} but SKAB "
                                  "files use ';'")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        # A near miss (case, spaces, a typo) is the usual cause: name it.
        loose = {h.strip().casefold(): h for h in header if h not in REQUIRED_COLUMNS}
        near = [repr(loose[m]) for c in missing
                for m in difflib.get_close_matches(c.casefold(), loose, n=1, cutoff=0.8)]
        hint = f" (found {', '.join(near)}: names must match exactly)" if near else ""
        raise ConfigError(key, f"line {line} (header): missing column(s) {names}{hint}; a SKAB "
                          "header has datetime, the 8 sensor channels and anomaly, ';'-separated "
                          "(changepoint and other extra columns are ignored)")
    for c in REQUIRED_COLUMNS:
        if header.count(c) > 1:
            raise ConfigError(key, f"line {line} (header): column {c!r} appears "
                              f"{header.count(c)} times; each SKAB column must appear once")
    return [header.index(c) for c in REQUIRED_COLUMNS]


def _bad_cell(path: Path, where: str, column: str, cell: str) -> ConfigError:
    hint = ""
    try:
        float(cell.replace(",", "."))
        hint = "; write decimals with '.', not ','" if "," in cell else ""
    except ValueError:
        pass
    try:
        float(cell)
        problem = "is not finite"
    except ValueError:
        problem = "is empty" if not cell.strip() else "is not a number"
    return ConfigError(str(path), f"{where}, column {column!r}: {cell!r} {problem} (every "
                       f"sensor cell must be a finite number{hint})")


def check_skab_csv(path: str | Path) -> bytes:
    """Check one SKAB CSV's contents the way ``read_skab_csv`` will read them.

    UTF-8 (a byte-order mark is fine), ';'-separated, a header with REQUIRED_COLUMNS (extra
    columns ignored), every row as many cells as the header, every channel cell a finite
    number, every anomaly label 0 or 1. Blank lines are skipped, as pandas does. Messages say
    ``data row N`` (1-based, header and blank lines not counted: the row's place in the series)
    and ``line M`` (the line in the file).

    Returns:
        The anomaly labels, one byte (0 or 1) per data row.

    Raises:
        ConfigError: keyed by ``str(path)``, one line naming the first problem.
    """
    path = Path(path)
    key = str(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise ConfigError(key, f"is empty ({len(raw)} bytes); a SKAB file starts with the header "
                          "line datetime;Accelerometer1RMS;...;anomaly")
    reader = csv.reader(io.StringIO(_decode(path, raw), newline=""), delimiter=";")
    header: list[str] | None = None
    labels = bytearray()
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # pandas skips blank and whitespace-only lines
        if header is None:
            header = row
            *chan_idx, label_idx = _header_columns(path, row, reader.line_num)[1:]
            continue
        where = f"data row {len(labels) + 1} (line {reader.line_num})"
        if len(row) != len(header):
            why = " (every row needs one cell per header column)"
            if len(row) == 1 and "," in row[0]:
                why = "; separated by ',' but SKAB files use ';'"
            cells = f"{len(row)} cell{'s' if len(row) != 1 else ''}"
            raise ConfigError(key, f"{where}: {cells} but the header has {len(header)}{why}")
        try:
            # Fast path: a sum is finite only if every term is (nan and inf propagate).
            ok = math.isfinite(sum([float(row[i]) for i in chan_idx]))
        except ValueError:
            ok = False
        if not ok:
            for name, i in zip(CHANNELS, chan_idx, strict=True):
                try:
                    bad = not math.isfinite(float(row[i]))
                except ValueError:
                    bad = True
                if bad:
                    raise _bad_cell(path, where, name, row[i])
            # All finite, only the sum overflowed: the row is fine.
        cell = row[label_idx]
        label = _LABELS.get(cell)
        if label is None:
            try:
                label = {0.0: 0, 1.0: 1}.get(float(cell))
            except ValueError:
                pass
        if label is None:
            raise ConfigError(key, f"{where}, column 'anomaly': {cell!r} is not an anomaly label "
                              f"(allowed: {_ALLOWED_LABELS})")
        labels.append(label)
    if header is None:  # e.g. only a quote character: not empty, but no line either
        raise ConfigError(key, "has no header line")
    return bytes(labels)


# ----------------------------------------------------------------------------- the folder


def _too_short(rows: int, window: int, train_rows: int) -> str:
    have = "a header but no data rows" if rows == 0 else f"{rows} data rows"
    return (f"has {have}; need at least {train_rows + window}: dataset.train_rows={train_rows} "
            f"rows to train on, then dataset.window={window} more for one test window")


def check_data_dir(
    data_dir: str | Path | None,
    folders: list[str] | None = None,
    *,
    window: int | None = None,
    train_rows: int | None = None,
) -> None:
    """Fail fast with a one-line message if the SKAB directory is unusable.

    Without ``window`` and ``train_rows`` only the files' presence is checked. With both, every
    CSV the run reads is checked by ``check_skab_csv`` and against the protocol of
    ``tinyexp.data.skab``: each file needs more than ``train_rows`` rows and a test part (the
    rows after them) of at least ``window`` rows. Metrics pool all files, so a file with no
    anomaly in its test part, or with anomalies in its training part (SKAB's other/2.csv has
    them from row 105), is only logged as a warning; no anomalous test row in any file, or no
    ``window`` normal rows in a row anywhere, is an error.

    Raises:
        FileNotFoundError: the directory is missing or no anomalous folder holds a CSV.
        ConfigError: keyed by the bad file's path, or by ``dataset.data_dir`` for the folder
            as a whole.
        TypeError: only one of ``window`` and ``train_rows`` given.
    """
    if not data_dir or not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"SKAB directory not found: dataset.data_dir={data_dir!r} "
            "(point it at a folder holding valve1/, valve2/ or other/)"
        )
    files = anomalous_files(data_dir, folders)
    if not files:
        wanted = "/, ".join(folders if folders is not None else ANOMALOUS_FOLDERS)
        raise FileNotFoundError(
            f"no SKAB CSV files under dataset.data_dir={str(data_dir)!r} (looked in {wanted}/)"
        )
    if window is None and train_rows is None:
        return
    if window is None or train_rows is None:
        raise TypeError("check_data_dir: pass both window and train_rows, or neither")

    quiet: list[str] = []  # files without an anomaly in their test part
    normal_window = False
    for path in files:
        labels = check_skab_csv(path)
        if len(labels) < train_rows + window:
            raise ConfigError(str(path), _too_short(len(labels), window, train_rows))
        train, test = labels[:train_rows], labels[train_rows:]
        if 1 in train:
            log.warning("%s: %d of its first %d rows (the training part) are labelled anomalous, "
                        "first at data row %d; the model trains on them as normal and they raise "
                        "its threshold (as in SKAB's published protocol)",
                        path, train.count(1), train_rows, train.index(1) + 1)
        if 1 not in test:
            quiet.append(path.relative_to(data_dir).as_posix())
        # mse is measured on test windows without an anomalous row; they must exist somewhere.
        normal_window = normal_window or any(len(run) >= window for run in labels.split(b"\x01"))

    if len(quiet) == len(files):
        raise ConfigError("dataset.data_dir", f"none of the {len(files)} files under "
                          f"{str(data_dir)!r} has an anomaly (anomaly=1) after its first "
                          f"dataset.train_rows={train_rows} rows; F1, MAR and ROC AUC need "
                          "anomalous test rows")
    if not normal_window:
        raise ConfigError("dataset.data_dir", f"no file under {str(data_dir)!r} has "
                          f"dataset.window={window} normal rows (anomaly=0) in a row; mse is "
                          "measured on such anomaly-free windows")
    if quiet:
        log.warning("dataset.data_dir: %d of %d files have no anomaly after their first %d rows "
                    "(%s); they add only normal rows to the pooled metrics",
                    len(quiet), len(files), train_rows, ", ".join(quiet))
