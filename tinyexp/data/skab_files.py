"""Locating SKAB files on disk (stdlib only, so config validation can call it cheaply)."""

from __future__ import annotations

from pathlib import Path

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

ANOMALOUS_FOLDERS = ("valve1", "valve2", "other")


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


def check_data_dir(data_dir: str | Path | None, folders: list[str] | None = None) -> None:
    """Fail fast with a one-line message if the SKAB directory is unusable.

    Raises:
        FileNotFoundError: the directory is missing or no anomalous folder holds a CSV.
    """
    if not data_dir or not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"SKAB directory not found: dataset.data_dir={data_dir!r} "
            "(point it at a folder holding valve1/, valve2/ or other/)"
        )
    if not anomalous_files(data_dir, folders):
        wanted = "/, ".join(folders if folders is not None else ANOMALOUS_FOLDERS)
        raise FileNotFoundError(
            f"no SKAB CSV files under dataset.data_dir={str(data_dir)!r} (looked in {wanted}/)"
        )
