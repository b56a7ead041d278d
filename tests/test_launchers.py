"""Hydra's launchers from the ``distributed`` extra running tinyexp's multiruns: joblib (the
jobs of a grid, or of an Optuna batch, in parallel worker processes on one machine) and
submitit_local (each job a process of its own, as on a SLURM cluster). Slow tier: real jobs.

Parallel means: the jobs ran in different processes (their runs' ``tinyexp.pid``) and their
runs overlap in time. No timings are asserted.
"""

from __future__ import annotations

import importlib.util

import pytest
from support import TINY, run_cli

pytestmark = pytest.mark.slow

GRID = ["-m", *TINY, "prune.ratio=0.2,0.4,0.6,0.8", "quant=none", "cache_dir=cache"]


def _runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tinyexp.role") == "sweep"]
    return parents, [r for r in runs if r not in parents]


def _overlap(runs) -> bool:
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.fixture(autouse=True)
def _launchers():
    for name in ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed: pip install -e '.[distributed]'")


def test_joblib_runs_a_grid_in_two_processes_at_once(tmp_path):
    result = run_cli([*GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      "hydra.sweep.dir=grid"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parents, jobs = _runs(tmp_path)
    assert len(parents) == 1 and len(jobs) == 4
    assert all(r.info.status == "FINISHED" for r in jobs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in jobs)
    assert sorted(float(r.data.params["prune.ratio"]) for r in jobs) == [0.2, 0.4, 0.6, 0.8]
    assert len({r.data.tags["tinyexp.pid"] for r in jobs}) == 2
    assert _overlap(jobs)
    # the four share one baseline: trained once (the others waited for it), every job reports
    # how its latency was timed
    assert all(r.data.metrics["baseline/latency_exclusive"] == 1.0 for r in jobs)


def test_joblib_runs_an_optuna_batch_in_parallel(tmp_path):
    result = run_cli(["-m", "search=memory_budget", "target=tiny", *TINY, "cache_dir=cache",
                      "search.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "hydra.sweep.dir=search"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    parents, trials = _runs(tmp_path)
    assert len(parents) == 1 and len(trials) == 2
    assert sorted(int(r.data.tags["tinyexp.trial"]) for r in trials) == [0, 1]
    assert len({r.data.tags["tinyexp.pid"] for r in trials}) == 2
    assert _overlap(trials)


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
