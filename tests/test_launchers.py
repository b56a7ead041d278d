"""Hydra's launchers from the ``distributed`` extra running tinyexp's multiruns: joblib (the
jobs of a grid, or of an Optuna batch, in parallel worker processes on one machine) and
submitit_local (each job a process of its own, as on a SLURM cluster). Slow tier: real jobs.

Parallel means: two jobs were held at their training's start at the same time, in two
processes (their runs' ``tinyexp.pid``). No timings are asserted.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from jobs import GATE, wait_until
from support import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow

def _runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tinyexp.role") == "sweep"]
    return parents, [r for r in runs if r not in parents]


@pytest.fixture(autouse=True)
def _launchers():
    for name in ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed: pip install -e '.[distributed]'")


def test_joblib_runs_a_grid_in_two_processes_at_once(tmp_path):
    # Four seeds (four baselines). Every job's first training waits at its start for the gate
    # (jobs.JobHooks): the gate opens once two jobs are waiting there at the same time, which
    # only two jobs running at once can do.
    gate = tmp_path / "gate"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "CI": "1", GATE: str(gate)}
    with open(tmp_path / "grid.out", "w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "tinyexp", "-m", *TINY, "seed=0,1,2,3", "quant=none",
             "cache_dir=cache", "+callbacks.hooks._target_=jobs.JobHooks",
             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=grid"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(list(tmp_path.glob("gate.started.*"))) >= 2
                   or job.poll() is not None, timeout=300)
        waiting = {int(p.name.rsplit(".", 1)[1]) for p in tmp_path.glob("gate.started.*")}
    finally:
        gate.touch()
    assert job.wait(600) == 0, (tmp_path / "grid.out").read_text()[-3000:]
    assert len(waiting) == 2  # two jobs held at once, in two processes
    parents, jobs = _runs(tmp_path)
    assert len(parents) == 1 and len(jobs) == 4
    assert all(r.info.status == "FINISHED" for r in jobs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in jobs)
    assert sorted(int(r.data.params["seed"]) for r in jobs) == [0, 1, 2, 3]
    assert {int(r.data.tags["tinyexp.pid"]) for r in jobs} == waiting
    # every job reports how its latency was timed: under the host-wide lock
    assert all(r.data.metrics["baseline/latency_exclusive"] == 1.0 for r in jobs)


def test_joblib_runs_an_optuna_batch_in_parallel(tmp_path):
    result = run_cli(["-m", "search=memory_budget", "target=tiny", *TINY, "cache_dir=cache",
                      "search.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "hydra.sweep.dir=search"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parents, trials = _runs(tmp_path)
    assert len(parents) == 1 and len(trials) == 2
    assert sorted(int(r.data.tags["tinyexp.trial"]) for r in trials) == [0, 1]
    assert all(r.info.status == "FINISHED" for r in trials)
    # the trials ran in joblib's worker processes, not in the sweeper's (the parent's)
    assert parents[0].data.tags["tinyexp.pid"] not in {r.data.tags["tinyexp.pid"] for r in trials}


def test_submitit_local_runs_each_job_in_a_process_of_its_own(tmp_path):
    result = run_cli(["-m", *TINY, "prune.ratio=0.3,0.6", "quant=none", "cache_dir=cache",
                      "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                      "hydra.sweep.dir=grid"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parents, jobs = _runs(tmp_path)
    assert len(parents) == 1 and len(jobs) == 2
    assert all(r.info.status == "FINISHED" for r in jobs)
    assert len({r.data.tags["tinyexp.pid"] for r in jobs}) == 2
    # submitit's own records of each job (what SLURM would hold): its logs in the sweep folder
    assert list((tmp_path / "grid" / ".submitit").rglob("*_log.out"))
