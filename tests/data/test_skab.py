from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyexp.data.skab import CHANNELS, SkabDataModule, read_skab_csv
from tinyexp.data.skab_files import anomalous_files, check_data_dir

REPO = Path(__file__).resolve().parents[2]
HEADER = "datetime;" + ";".join(CHANNELS) + ";anomaly;changepoint"


def write_skab_csv(path: Path, rows: int, anomalies: list[tuple[int, int]], seed: int) -> None:
    """Write random data in SKAB's exact CSV format (';'-separated, datetime index)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(loc=np.arange(8) * 10.0, scale=np.arange(1, 9), size=(rows, 8))
    labels = np.zeros(rows, dtype=int)
    for start, stop in anomalies:
        labels[start:stop] = 1
        values[start:stop, 3] += 50.0
    changepoint = np.diff(np.r_[0, labels]) != 0
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for t in range(rows):
        stamp = f"2020-03-09 {10 + t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"
        cells = ";".join(f"{v:.6g}" for v in values[t])
        lines.append(f"{stamp};{cells};{float(labels[t])};{float(changepoint[t])}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def skab_dir(tmp_path: Path) -> Path:
    write_skab_csv(tmp_path / "anomaly-free" / "anomaly-free.csv", 300, [], seed=0)
    for i, name in enumerate(["10", "2", "0", "1"]):  # written out of order on purpose
        write_skab_csv(tmp_path / "valve1" / f"{name}.csv", 220 + 10 * i, [(150, 180)], seed=i + 1)
    return tmp_path


def test_files_sorted_numerically_and_anomaly_free_ignored(skab_dir: Path) -> None:
    files = anomalous_files(skab_dir)
    assert [f.relative_to(skab_dir).as_posix() for f in files] == [
        "valve1/0.csv",
        "valve1/1.csv",
        "valve1/2.csv",
        "valve1/10.csv",
    ]


def test_loader_segments_scaling_and_shapes(skab_dir: Path) -> None:
    dm = SkabDataModule(str(skab_dir), window=20, train_rows=100, val_fraction=0.25, seed=3)
    dm.setup("fit")
    dm.setup("validate")  # idempotent
    assert dm.task == "anomaly" and dm.num_channels == 8 and dm.window == 20
    assert [s.name for s in dm.segments] == ["valve1/0", "valve1/1", "valve1/2", "valve1/10"]
    for seg in dm.segments:
        values, labels = read_skab_csv(skab_dir / f"{seg.name}.csv")
        rows = len(values)
        assert seg.train.shape == (100 - 20 + 1, 20, 8) and seg.train.dtype == np.float32
        assert seg.test.shape == (rows - 20 + 1, 20, 8)
        np.testing.assert_array_equal(seg.labels, labels)
        assert seg.labels.sum() == 30
        # Scaled with the first 100 rows only (population std, as StandardScaler).
        head = values[:100]
        expected = (values - head.mean(axis=0)) / head.std(axis=0)
        series = np.concatenate([seg.test[:, 0], seg.test[-1, 1:]])
        np.testing.assert_allclose(series, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(seg.train[5], expected[5:25], rtol=1e-4, atol=1e-4)
    pooled = sum(len(s.train) for s in dm.segments)
    assert len(dm.val_windows) == round(0.25 * pooled)
    assert len(dm.train_windows) + len(dm.val_windows) == pooled
    assert dm.example_input().shape == (1, 20, 8)
    assert dm.calibration_windows(10).shape == (10, 20, 8)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (32, 20, 8)


def test_val_split_is_seeded(skab_dir: Path) -> None:
    a, b, c = (SkabDataModule(str(skab_dir), window=20, train_rows=100, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert np.array_equal(a.val_windows.numpy(), b.val_windows.numpy())
    assert not np.array_equal(a.val_windows.numpy(), c.val_windows.numpy())


def test_folders_argument(skab_dir: Path) -> None:
    write_skab_csv(skab_dir / "other" / "3.csv", 200, [(120, 140)], seed=9)
    dm = SkabDataModule(str(skab_dir), window=20, train_rows=100, folders=["other"])
    dm.setup()
    assert [s.name for s in dm.segments] == ["other/3"]
    full = SkabDataModule(str(skab_dir), window=20, train_rows=100)
    full.setup()
    assert [s.name for s in full.segments][-1] == "other/3" and len(full.segments) == 5


def test_check_data_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset.data_dir"):
        check_data_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="dataset.data_dir"):
        check_data_dir(tmp_path)
    write_skab_csv(tmp_path / "anomaly-free" / "anomaly-free.csv", 100, [], seed=0)
    with pytest.raises(FileNotFoundError, match="dataset.data_dir"):
        check_data_dir(tmp_path)  # anomaly-free alone has nothing to evaluate
    with pytest.raises(FileNotFoundError, match="dataset.data_dir"):
        SkabDataModule(str(tmp_path)).setup()


def test_check_data_dir_is_light(skab_dir: Path) -> None:
    """Config validation reads every file's contents with the stdlib only."""
    code = (
        "import sys; from tinyexp.data.skab_files import check_data_dir; "
        f"check_data_dir({str(skab_dir)!r}, window=20, train_rows=100); "
        "heavy = {'torch', 'pandas', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)


def test_short_file_is_named_by_the_loader(skab_dir: Path) -> None:
    # 110 rows hold the 100 training rows but not one 20-row window after them.
    write_skab_csv(skab_dir / "valve1" / "1.csv", 110, [(104, 108)], seed=5)
    dm = SkabDataModule(str(skab_dir), window=20, train_rows=100)
    with pytest.raises(ValueError, match=r"valve1/1\.csv: 110 data rows, need at least 120"):
        dm.setup()


def test_bad_cell_is_named_by_the_loader(skab_dir: Path) -> None:
    path = skab_dir / "valve1" / "2.csv"
    lines = path.read_text().splitlines()
    cells = lines[17].split(";")
    cells[CHANNELS.index("Current") + 1] = "n/a!"
    lines[17] = ";".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"^.*valve1/2\.csv: data row 17 \(line 18\), column "
                       r"'Current': 'n/a!' is not a number"):
        SkabDataModule(str(skab_dir), window=20, train_rows=100).setup()


def _real_skab_dir() -> Path:
    return Path(os.environ.get("TINYEXP_SKAB_DIR", REPO.parent / "shared/data/skab"))


@pytest.mark.skipif(not anomalous_files(_real_skab_dir()), reason="SKAB data not available")
def test_real_skab() -> None:
    for window in (32, 60):
        check_data_dir(_real_skab_dir(), window=window, train_rows=400)
    dm = SkabDataModule(str(_real_skab_dir()))
    dm.setup("fit")
    assert dm.num_channels == 8 and len(dm.segments) == len(anomalous_files(_real_skab_dir()))
    for seg in dm.segments:
        assert seg.train.shape == (400 - 60 + 1, 60, 8)
        assert len(seg.test) == len(seg.labels) - 59
        # No per-file 'training part is normal': SKAB's other/2.csv is anomalous from row 105.
        assert seg.labels.sum() > 0
        assert np.isfinite(seg.test).all()
