"""A small synthetic SKAB folder (``valve1/0.csv``, ``valve1/1.csv``: 600 rows, ';'-separated,
anomalies after row 400) and the ways ``tests/test_bad_inputs.py`` breaks one of its files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

COLUMNS = ["datetime", "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
           "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS", "anomaly",
           "changepoint"]
BROKEN = "valve1/1.csv"  # the file a break applies to


def rows(n: int = 600, anomalies: bool = True) -> list[list[str]]:
    """``n`` data rows; rows 450-479 anomalous (after the 400 training rows) if ``anomalies``."""
    out = []
    for i in range(n):
        label = "1.0" if anomalies and 450 <= i < 480 else "0.0"
        sensors = [f"{(i * (c + 3)) % 17 / 7 + c:.4f}" for c in range(8)]
        out.append([f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d}", *sensors, label, "0.0"])
    return out


def write(path: Path, data: list[list[str]], header: list[str] = COLUMNS, sep: str = ";") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sep.join(r) for r in [header, *data]) + "\n")


def skab(break_file: Callable[[Path], None] | None = None,
         anomalies: bool = True) -> Callable[[Path], None]:
    """A setup writing the folder into ``<cwd>/skab``, then calling ``break_file`` on
    ``<cwd>/skab/valve1/1.csv``."""
    def setup(cwd: Path) -> None:
        for name in ("0.csv", "1.csv"):
            write(cwd / "skab" / "valve1" / name, rows(anomalies=anomalies))
        if break_file is not None:
            break_file(cwd / "skab" / BROKEN)
    return setup


def _cell(row: int, column: int, value: str) -> Callable[[Path], None]:
    def put(path: Path) -> None:
        data = rows()
        data[row][column] = value
        write(path, data)
    return put


# name -> how the file is broken
BREAKS: dict[str, Callable[[Path], None]] = {
    "wrong_columns": lambda p: write(p, rows(), [c.replace("Current", "Curent") for c in COLUMNS]),
    "duplicate_column": lambda p: write(p, [r + ["1"] for r in rows()], COLUMNS + ["Current"]),
    "non_numeric": _cell(10, 3, "n/a!"),
    "nan_cell": _cell(20, 1, "nan"),
    "empty_cell": _cell(30, 5, ""),
    "inf_cell": _cell(40, 2, "inf"),
    "label_yes": _cell(50, 9, "yes"),
    "label_two": _cell(50, 9, "2"),
    "short_row": lambda p: write(p, [r[:-2] if i == 60 else r for i, r in enumerate(rows())]),
    "three_rows": lambda p: write(p, rows(3)),
    "header_only": lambda p: write(p, []),
    "zero_bytes": lambda p: p.write_bytes(b""),
    "non_utf8": lambda p: p.write_bytes(p.read_bytes().replace(b"2020-03-09 10:00:05",
                                                               b"2020-03-09 10:00:0\xe9")),
    "utf16": lambda p: p.write_text(p.read_text(), encoding="utf-16"),
    "comma_separated": lambda p: write(p, rows(), sep=","),
}
