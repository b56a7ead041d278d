"""The distributed tier (``make test-distributed``, ``-m distributed``): search workers sharing
one Optuna study in PostgreSQL, their runs in an MLflow server backed by the same PostgreSQL
(``tests/servers.py``): the topology of ``docker/compose.yaml``, without containers. Each worker
runs in a folder of its own, as on a machine of its own (its own sweep folder and cache).

Every check counts: trials in the study by state, MLflow runs by trial and parent, job folders
by worker; and no output holds the database password.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jobs import GATE, KILL_AT_EPOCH, wait_until
from servers import mlflow_server, postgres, postgres_missing
from support import ROOT, TINY

pytestmark = pytest.mark.distributed

SEARCH = ["-m", "search=memory_budget", "target=tiny", *TINY, "cache_dir=cache",
          "+callbacks.hooks._target_=jobs.JobHooks"]
FINISHED = ("COMPLETE", "PRUNED")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    missing = postgres_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the distributed tier needs PostgreSQL here: {missing}")
        pytest.skip(missing)
    import optuna

    with postgres() as db, mlflow_server(db, tmp_path_factory.mktemp("mlflow")) as server:
        # Optuna's tables, made once before any worker (as docker/compose.yaml's
        # optuna-schema does): workers creating them at the same moment can collide.
        url = db.url("optuna").replace(f"{db.user}@", f"{db.user}:{db.password}@")
        optuna.storages.RDBStorage(url).engine.dispose()
        yield db, server


def start_worker(cwd: Path, name: str, servers, study: str, n_trials: int,
                 password_in_url: bool = False, args: tuple = (),
                 env: dict | None = None) -> subprocess.Popen:
    """``python -m tinyexp -m search=memory_budget ...`` against the shared study, in
    ``cwd`` (its sweep folder ``cwd/<name>``, its console ``cwd/<name>.out``). The password
    comes through PGPASSWORD, or (``password_in_url``) in the storage URL itself."""
    db, server = servers
    cwd.mkdir(parents=True, exist_ok=True)
    url = db.url("optuna")
    if password_in_url:
        url = url.replace(f"{db.user}@", f"{db.user}:{db.password}@")
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "CI": "1",
                "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": server.url, **(env or {})}
    full_env.pop("PGPASSWORD", None)
    if not password_in_url:
        full_env["PGPASSWORD"] = db.password
    with open(cwd / f"{name}.out", "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tinyexp", *SEARCH, f"search.n_trials={n_trials}",
             f"hydra.sweeper.study_name={study}", f"hydra.sweeper.storage='{url}'",
             *([] if "logger=none" in args else [f"logger.experiment_name={study}"]),
             f"hydra.sweep.dir={name}", *args],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def finish(worker: subprocess.Popen, out: Path, code: int = 0) -> None:
    assert worker.wait(600) == code, out.read_text()[-4000:]


def load(servers, study: str):
    import optuna

    db, _ = servers
    url = db.url("optuna").replace(f"{db.user}@", f"{db.user}:{db.password}@")
    return optuna.load_study(study_name=study, storage=url)


def states(study) -> collections.Counter:
    return collections.Counter(t.state.name for t in study.get_trials(deepcopy=False))


def mlflow_runs(servers, study: str) -> tuple:
    """(the study's parent runs, its other runs) in the experiment named after it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=servers[1].url)
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tinyexp.role") == "sweep"]
    return client, parents, [r for r in runs if r not in parents]


def check_runs(servers, study_name: str, study) -> tuple:
    """One parent; under it one FINISHED run for each COMPLETE trial. The counts."""
    client, parents, children = mlflow_runs(servers, study_name)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.data.tags["tinyexp.optuna.study"] == study_name
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    finished = collections.Counter(int(r.data.tags["tinyexp.trial"]) for r in children
                                   if r.info.status == "FINISHED")
    complete = sorted(t.number for t in study.get_trials(deepcopy=False)
                      if t.state.name == "COMPLETE")
    assert sorted(finished.elements()) == complete
    return client, parent, children


def held(worker: subprocess.Popen, tmp_path: Path) -> None:
    """Wait until the worker's first training is held at its start (jobs.GATE)."""
    wait_until(lambda: any(tmp_path.glob("gate.started.*")) or worker.poll() is not None,
               timeout=300)
    assert worker.poll() is None, (tmp_path / "a" / "sweep.out").read_text()[-4000:]


def job_folders(cwd: Path, name: str) -> set[int]:
    sweep = cwd / name
    return {int(p.name) for p in sweep.iterdir() if p.name.isdigit()} if sweep.exists() \
        else set()


def test_two_workers_share_one_study_and_one_parent_run_and_keep_the_password(servers,
                                                                                  tmp_path):
    db, server = servers
    name, n_trials = "two-workers", 4
    workers = {"a": start_worker(tmp_path / "a", "sweep", servers, name, n_trials),
               "b": start_worker(tmp_path / "b", "sweep", servers, name, n_trials,
                                 password_in_url=True)}
    for key, worker in workers.items():
        finish(worker, tmp_path / key / "sweep.out")

    study = load(servers, name)
    counts = states(study)
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials, counts
    assert counts["RUNNING"] == counts["FAIL"] == 0, counts
    # each trial ran once, in one of the workers, and both took part
    a, b = job_folders(tmp_path / "a", "sweep"), job_folders(tmp_path / "b", "sweep")
    assert a and b and not a & b and a | b == set(range(n_trials)), (a, b)

    client, parent, children = check_runs(servers, name, study)
    assert len(children) == n_trials
    # artifacts through the server: the study's results and a trial's files
    got = Path(client.download_artifacts(parent.info.run_id, "optimization_results.yaml",
                                         str(tmp_path / "download")))
    assert "best_params" in got.read_text()
    child = children[0]
    files = [f.path for f in client.list_artifacts(child.info.run_id)]
    assert files, "the trial's run has no artifacts"
    assert Path(client.download_artifacts(child.info.run_id, files[0],
                                          str(tmp_path / "download"))).exists()

    # the password is nowhere: files of both workers (configs, overrides, logs, results), the
    # consoles, the server's artifacts, every MLflow param, tag and run name, the study
    secret = db.password.encode()
    for root in (tmp_path / "a", tmp_path / "b", server.artifacts):
        for path in root.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), path
    for run in (parent, *children):
        text = " ".join([run.info.run_name or "", *run.data.params.values(),
                         *run.data.tags.values()])
        assert db.password not in text, run.info.run_id
    for trial in study.get_trials(deepcopy=False):
        assert db.password not in repr((trial.user_attrs, trial.system_attrs, trial.params))
    assert db.password not in repr(study.user_attrs)
    print(f"\n[distributed] {name}: {dict(counts)}; worker a ran trials {sorted(a)}, b ran "
          f"{sorted(b)}; MLflow: 1 parent, {len(children)} trial runs")


def test_a_worker_killed_mid_trial_is_reclaimed_and_the_study_completes(servers, tmp_path):
    name, n_trials = "killed-worker", 3
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5"]
    killed = start_worker(tmp_path / "a", "sweep", servers, name, n_trials, args=beat,
                          env={KILL_AT_EPOCH: "1"})  # SIGKILL in its first trial's training
    finish(killed, tmp_path / "a" / "sweep.out", -signal.SIGKILL)
    assert states(load(servers, name)) == {"RUNNING": 1}

    workers = {"a": start_worker(tmp_path / "a", "sweep", servers, name, n_trials, args=beat),
               "b": start_worker(tmp_path / "b", "sweep", servers, name, n_trials, args=beat)}
    for key, worker in workers.items():
        finish(worker, tmp_path / key / "sweep.out")

    study = load(servers, name)
    counts = states(study)
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials, counts
    assert counts["FAIL"] == 1 and counts["RUNNING"] == 0, counts
    (failed,) = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    assert failed.number == 0
    client, parent, children = check_runs(servers, name, study)
    # the killed job's run was left RUNNING; the next start on this host marked it KILLED
    killed_runs = [r for r in children if r.data.tags["tinyexp.trial"] == "0"]
    assert [r.info.status for r in killed_runs] == ["KILLED"]
    print(f"\n[distributed] {name}: {dict(counts)}; MLflow: 1 parent, "
          f"{collections.Counter(r.info.status for r in children)}")


def test_the_database_restarting_mid_search_loses_nothing(servers, tmp_path):
    db, _ = servers
    name, n_trials = "db-restart", 2
    gate = tmp_path / "gate"
    worker = start_worker(tmp_path / "a", "sweep", servers, name, n_trials,
                          env={GATE: str(gate)})
    held(worker, tmp_path)
    db.ctl("restart")  # the first trial's training is held at its start meanwhile
    gate.touch()
    code = worker.wait(600)
    out = (tmp_path / "a" / "sweep.out").read_text()
    if code != 0:  # allowed: one clear line, and the same command resumes
        errors = [line for line in out.splitlines() if "error:" in line]
        assert len(errors) == 1, out[-4000:]
        rerun = start_worker(tmp_path / "a", "sweep", servers, name, n_trials)
        finish(rerun, tmp_path / "a" / "sweep.out")
    counts = states(load(servers, name))
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials and counts["RUNNING"] == 0, counts
    print(f"\n[distributed] {name}: worker exit {code}; {dict(counts)}")


def test_a_database_that_stays_down_stops_the_worker_in_one_line_and_a_rerun_resumes(servers,
                                                                                     tmp_path):
    db, _ = servers
    name, n_trials = "db-down", 2
    # no MLflow here: the tracking server shares the database and would only retry
    args = ("logger=none", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5")
    gate = tmp_path / "gate"
    worker = start_worker(tmp_path / "a", "sweep", servers, name, n_trials, args=args,
                          env={GATE: str(gate)})
    held(worker, tmp_path)
    db.ctl("stop", "-m", "fast")  # the first trial's training is held at its start meanwhile
    try:
        gate.touch()
        code = worker.wait(600)
    finally:
        db.ctl("start")
    out = (tmp_path / "a" / "sweep.out").read_text()
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert code == 1, out[-4000:]
    assert last.startswith("tinyexp: error: hydra.sweeper.storage: the study's database"), last
    assert "rerun the same command to resume" in last and db.password not in out

    rerun = start_worker(tmp_path / "a", "sweep", servers, name, n_trials, args=args)
    finish(rerun, tmp_path / "a" / "sweep.out")
    counts = states(load(servers, name))
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials and counts["RUNNING"] == 0, counts
    print(f"\n[distributed] {name}: worker exit {code}: {last}\n  rerun: {dict(counts)}")
