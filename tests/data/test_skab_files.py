"""Checking SKAB files before a run: every bad-file kind gives a one-line ConfigError keyed by it.

The files are synthesized here (SKAB's format, tiny sizes) so the tests need no real data.
``read_skab_csv`` (tinyexp.data.skab) is checked against the same cases: it is the second line
of defence and must name the file just as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tinyexp.data.skab import read_skab_csv
from tinyexp.data.skab_files import CHANNELS, check_data_dir
from tinyexp.schemas import ConfigError

WINDOW, TRAIN_ROWS, ROWS = 8, 60, 100  # a file needs TRAIN_ROWS + WINDOW = 68 data rows
ANOMALIES = range(80, 90)  # 0-based data rows, all in the test part
HEADER = ["datetime", *CHANNELS, "anomaly", "changepoint"]


def skab_table(rows: int = ROWS, anomalies: range | list[int] = ANOMALIES) -> list[list[str]]:
    """Header plus ``rows`` data rows of SKAB's columns: deterministic values, 0.0/1.0 labels."""
    table = [list(HEADER)]
    for t in range(rows):
        values = [f"{c + ((t * 7 + c * 13) % 17) / 10:.4f}" for c in range(len(CHANNELS))]
        label = "1.0" if t in anomalies else "0.0"
        table.append([f"2020-03-09 10:{t // 60 % 60:02d}:{t % 60:02d}", *values, label, "0.0"])
    return table


def write_csv(path: Path, table: list[list[str]], *, sep: str = ";", encoding: str = "utf-8",
              newline: str = "\r\n") -> Path:
    """Write ``table`` as SKAB does (';'-separated, CRLF, UTF-8) unless told otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(sep.join(row) + newline for row in table).encode(encoding))
    return path


def valid_dir(root: Path, names: tuple[str, ...] = ("0", "1", "10")) -> Path:
    for name in names:
        write_csv(root / "valve1" / f"{name}.csv", skab_table())
    return root


def check(root: Path) -> None:
    check_data_dir(root, window=WINDOW, train_rows=TRAIN_ROWS)


# ----------------------------------------------------------------------------- bad files


def _table(mutate: Callable[[list[list[str]]], None], **write: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        table = skab_table()
        mutate(table)
        write_csv(path, table, **write)

    return make


def _cell(data_row: int, column: str, value: str) -> Callable[[Path], None]:
    def mutate(table: list[list[str]]) -> None:
        table[data_row][HEADER.index(column)] = value

    return _table(mutate)


def _drop(column: str) -> Callable[[list[list[str]]], None]:
    def mutate(table: list[list[str]]) -> None:
        i = table[0].index(column)
        for row in table:
            del row[i]

    return mutate


def _append_latin1(table: list[list[str]]) -> None:
    table[3][0] += " \u00b5"  # 0xb5 in Latin-1, invalid on its own in UTF-8


def _rename(name: str) -> Callable[[list[list[str]]], None]:
    def mutate(table: list[list[str]]) -> None:
        table[0][HEADER.index("Current")] = name

    return mutate


def _duplicate_current(table: list[list[str]]) -> None:
    for row in table:
        row.append(row[HEADER.index("Current")])


def _short_row(table: list[list[str]]) -> None:
    del table[9][4]


def _long_row(table: list[list[str]]) -> None:
    table[9].append("1.0")


def _comma_row(table: list[list[str]]) -> None:
    table[20] = [",".join(table[20])]


def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _rows(rows: int, anomalies: range = ANOMALIES) -> Callable[[Path], None]:
    return lambda path: write_csv(path, skab_table(rows, anomalies))


# (id, writes the bad file, a piece of the message)
BAD = [
    ("not_utf8", _table(_append_latin1, encoding="latin-1"),
     "is not UTF-8 text: byte 0xb5 at byte offset"),
    ("utf16", _table(lambda t: None, encoding="utf-16"), "is UTF-16 text; SKAB files are UTF-8"),
    ("comma_separated", _table(lambda t: None, sep=","),
     "line 1 (header): separated by ',' but SKAB files use ';'"),
    ("tab_separated", _table(lambda t: None, sep="\t"), "separated by tabs but SKAB files use ';'"),
    ("missing_column", _table(_drop("Current")), "missing column(s) 'Current'"),
    ("missing_anomaly", _table(_drop("anomaly")), "missing column(s) 'anomaly'"),
    ("case_and_space", _table(_rename("current ")), "(found 'current ': names must match exactly)"),
    ("misspelled_column", _table(_rename("Curent")),
     "missing column(s) 'Current' (found 'Curent':"),
    ("duplicate_column", _table(_duplicate_current), "column 'Current' appears 2 times"),
    ("not_a_number", _cell(17, "Current", "n/a!"),
     "data row 17 (line 18), column 'Current': 'n/a!' is not a number (every sensor cell must "
     "be a finite number)"),
    ("empty_cell", _cell(5, "Pressure", ""), "column 'Pressure': '' is empty"),
    ("nan_cell", _cell(70, "Voltage", "NaN"), "data row 70 (line 71), column 'Voltage': 'NaN' is "
     "not finite"),
    ("inf_cell", _cell(2, "Temperature", "inf"), "'inf' is not finite"),
    ("overflow_cell", _cell(2, "Temperature", "1e999"), "'1e999' is not finite"),
    ("decimal_comma", _cell(2, "Temperature", "79,3366"), "write decimals with '.', not ','"),
    ("missing_cell", _table(_short_row), "data row 9 (line 10): 10 cells but the header has 11"),
    ("extra_cell", _table(_long_row), "data row 9 (line 10): 12 cells but the header has 11"),
    ("comma_row", _table(_comma_row), "data row 20 (line 21): 1 cell but the header has 11; "
     "separated by ','"),
    ("label_yes", _cell(12, "anomaly", "yes"), "data row 12 (line 13), column 'anomaly': 'yes' "
     "is not an anomaly label (allowed: 0 or 1"),
    ("label_2", _cell(12, "anomaly", "2"), "'2' is not an anomaly label"),
    ("label_empty", _cell(12, "anomaly", ""), "'' is not an anomaly label"),
    ("three_rows", _rows(3), "has 3 data rows; need at least 68: dataset.train_rows=60 rows to "
     "train on, then dataset.window=8 more for one test window"),
    ("test_part_short", _rows(67, range(62, 65)), "has 67 data rows; need at least 68"),
    ("header_only", _rows(0), "has a header but no data rows"),
    ("zero_bytes", _raw(b""), "is empty (0 bytes)"),
    ("blank_lines_only", _raw(b"\r\n \r\n"), "is empty (5 bytes)"),
]
# read_skab_csv does not know train_rows.
READ_ACCEPTS = {"three_rows", "test_part_short"}


def _params(cases: list) -> list:
    return [pytest.param(make, fragment, id=name) for name, make, fragment in cases]


@pytest.mark.parametrize(("make", "fragment"), _params(BAD))
def test_bad_file_is_rejected_by_its_path(tmp_path: Path, make, fragment: str) -> None:
    valid_dir(tmp_path)  # 0.csv, 1.csv and 10.csv around the bad 3.csv
    bad = tmp_path / "valve1" / "3.csv"
    make(bad)
    with pytest.raises(ConfigError) as err:
        check(tmp_path)
    message = str(err.value)
    assert err.value.key == str(bad)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert fragment in message


@pytest.mark.parametrize(("make", "fragment"),
                         _params([c for c in BAD if c[0] not in READ_ACCEPTS]))
def test_read_skab_csv_names_the_file(tmp_path: Path, make, fragment: str) -> None:
    bad = tmp_path / "3.csv"
    make(bad)
    with pytest.raises(ValueError) as err:
        read_skab_csv(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert fragment in message


def test_the_cli_line_for_a_bad_cell(tmp_path: Path) -> None:
    valid_dir(tmp_path)
    bad = tmp_path / "valve1" / "3.csv"
    _cell(17, "Current", "n/a!")(bad)
    with pytest.raises(ConfigError) as err:
        check(tmp_path)
    assert str(err.value) == (f"{bad}: data row 17 (line 18), column 'Current': 'n/a!' is not a "
                              "number (every sensor cell must be a finite number)")


# ----------------------------------------------------------------------------- valid files


def test_valid_folder_passes_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check(valid_dir(tmp_path))
    assert caplog.records == []


def _reorder(table: list[list[str]]) -> None:
    for row in table:
        row.reverse()


def _int_labels(table: list[list[str]]) -> None:
    for row in table[1:]:
        row[HEADER.index("anomaly")] = row[HEADER.index("anomaly")][0]


def _extra_column(table: list[list[str]]) -> None:
    for i, row in enumerate(table):
        row.append("note" if i == 0 else f'"free text {i}"')


def _blank_lines(table: list[list[str]]) -> None:
    table.insert(30, [""])
    table.append([""])


VARIANTS = {
    "lf": lambda p: write_csv(p, skab_table(), newline="\n"),
    "utf8_bom": lambda p: p.write_bytes(b"\xef\xbb\xbf" + write_csv(p, skab_table()).read_bytes()),
    "columns_reordered": _table(_reorder),
    "int_labels": _table(_int_labels),
    "no_changepoint": _table(_drop("changepoint")),
    "extra_quoted_column": _table(_extra_column),
    "blank_lines": _table(_blank_lines),
}


@pytest.mark.parametrize("make", list(VARIANTS.values()), ids=list(VARIANTS))
def test_valid_variants_pass_and_read_the_same(tmp_path: Path, make) -> None:
    plain = write_csv(tmp_path / "plain.csv", skab_table())
    variant = tmp_path / "valve1" / "0.csv"
    make(variant)
    check(tmp_path)
    for got, want in zip(read_skab_csv(variant), read_skab_csv(plain), strict=True):
        np.testing.assert_array_equal(got, want)


def test_contents_are_checked_only_with_window_and_train_rows(tmp_path: Path) -> None:
    valid_dir(tmp_path)
    _cell(17, "Current", "n/a!")(tmp_path / "valve1" / "3.csv")
    check_data_dir(tmp_path)  # presence only, as before
    check_data_dir(tmp_path, ["valve1"])
    with pytest.raises(TypeError, match="both window and train_rows"):
        check_data_dir(tmp_path, window=WINDOW)


# ----------------------------------------------------------------------------- the protocol


def test_one_file_without_test_anomalies_only_warns(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    valid_dir(tmp_path)
    write_csv(tmp_path / "valve1" / "3.csv", skab_table(anomalies=[]))
    with caplog.at_level(logging.WARNING):
        check(tmp_path)
    [record] = caplog.records
    assert record.getMessage() == ("dataset.data_dir: 1 of 4 files have no anomaly after their "
                                   "first 60 rows (valve1/3.csv); they add only normal rows to "
                                   "the pooled metrics")


def test_training_part_anomalies_only_warn(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # As SKAB's own other/2.csv, labelled anomalous from data row 105 with train_rows=400.
    valid_dir(tmp_path)
    path = write_csv(tmp_path / "valve1" / "3.csv", skab_table(anomalies=range(9, 90)))
    with caplog.at_level(logging.WARNING):
        check(tmp_path)
    [record] = caplog.records
    assert record.getMessage().startswith(f"{path}: 51 of its first 60 rows (the training part) "
                                          "are labelled anomalous, first at data row 10;")


@pytest.mark.parametrize("anomalies", [[], range(10, 20)], ids=["none", "training_part_only"])
def test_no_test_anomaly_in_any_file_is_rejected(tmp_path: Path, anomalies) -> None:
    for name in ("0", "1"):
        write_csv(tmp_path / "valve1" / f"{name}.csv", skab_table(anomalies=anomalies))
    with pytest.raises(ConfigError) as err:
        check(tmp_path)
    assert err.value.key == "dataset.data_dir"
    assert str(err.value) == (f"dataset.data_dir: none of the 2 files under {str(tmp_path)!r} has "
                              "an anomaly (anomaly=1) after its first dataset.train_rows=60 "
                              "rows; F1, MAR and ROC AUC need anomalous test rows")


def test_no_normal_window_anywhere_is_rejected(tmp_path: Path) -> None:
    write_csv(tmp_path / "other" / "0.csv", skab_table(anomalies=range(0, ROWS, WINDOW - 1)))
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: no file under .* has "
                       r"dataset\.window=8 normal rows \(anomaly=0\) in a row"):
        check(tmp_path)
