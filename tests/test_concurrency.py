"""Jobs started together on one machine: a new MLflow store is created once, under a lock, and
every job writes into a folder of its own, even within the same second."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from support import ROOT, TINY, compose

from tinyexp import tracking


@pytest.mark.slow  # end to end, ~20 s: the slow tier
def test_three_jobs_started_at_once_on_a_new_store_each_finish_in_their_own_folder(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT), "CI": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "tinyexp", *TINY, "cache_dir=cache"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [job.communicate(timeout=600) for job in jobs]
    for job, (_, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err[-3000:]

    folders = sorted(path.parent for path in tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(folders) == 3, list(tmp_path.rglob("*"))
    for folder in folders:
        assert json.loads((folder / "metrics.json").read_text())["pruned/params"] > 0
        assert len((folder / "summary.txt").read_text().splitlines()) > 3
    # Each job printed its own folder in its table.
    assert sorted(next(f for f in folders if f.name in out) for out, _ in outputs) == folders

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tinyexp").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    assert len({r.data.tags["tinyexp.pid"] for r in runs}) == 3


def test_job_folders_carry_the_time_then_microseconds_and_pid():
    from tinyexp import _resolvers  # noqa: F401  (what the CLI imports before composing)

    hydra = compose(hydra=True).hydra
    stamp = rf"\d{{4}}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{{6}}-{os.getpid()}"
    assert re.fullmatch(f"outputs/{stamp}", hydra.run.dir)
    assert re.fullmatch(f"multirun/{stamp}", hydra.sweep.dir)
    # One instant per process: the run and the sweep folder agree, and so do later reads.
    assert hydra.run.dir.split("/", 1)[1] == hydra.sweep.dir.split("/", 1)[1]
    assert compose(hydra=True).hydra.run.dir == hydra.run.dir


def test_a_sqlite_store_is_opened_under_a_lock_next_to_its_file(tmp_path):
    assert tracking._sqlite_file("sqlite:///mlflow.db") == "mlflow.db"
    assert tracking._sqlite_file(f"sqlite:///{tmp_path}/a.db?timeout=20") == f"{tmp_path}/a.db"
    for other in ("sqlite://", "sqlite:///:memory:", "http://localhost:5000", "file:./mlruns",
                  "postgresql://u@h/db"):
        assert tracking._sqlite_file(other) is None
    client = tracking.client_for(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    assert (tmp_path / "new" / "mlflow.db.lock").exists()
    assert client.get_experiment_by_name("Default") is not None  # created, schema complete
