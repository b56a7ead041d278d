"""The MLflow parent runs that group the jobs of a multirun (used by :mod:`tinyexp.tracking`,
which hands in its client; mlflow itself is not imported here).

- A sweep's parent (a grid, ``-m a=1,2``): its id is kept in the sweep folder, created by the
  first job under a file lock: the jobs of one sweep run on one machine.
- An Optuna study's parent: found through the tracking server by its tag
  (``tinyexp.optuna.study``), so workers on several machines, each with its own sweep folder,
  share one. The sweeper creates it before any trial, one worker at a time (its study lock);
  should two creators still race, the oldest run wins and the other deletes its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyexp.files import atomic_write, file_lock
from tinyexp.interrupts import deferred

STUDY_TAG = "tinyexp.optuna.study"


def _create(client: Any, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    # The parent only groups its children; closing it now means no crash can leave it open.
    with deferred():
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def sweep_parent(client: Any, experiment_id: str, sweep_dir: Path, name: str,
                 tags: dict[str, str]) -> str:
    """The parent run of a multirun, created by its first job and found by the others.

    Its id is kept in the sweep folder; a file lock keeps parallel jobs from creating two.
    """
    id_file = sweep_dir / ".mlflow_parent_run_id"
    with file_lock(sweep_dir / ".mlflow_parent.lock"):
        if id_file.exists():
            return id_file.read_text().strip()
        run_id = _create(client, experiment_id, name, {
            "tinyexp.role": "sweep", "tinyexp.sweep": sweep_dir.name,
            "tinyexp.sweep_dir": str(sweep_dir.resolve()), **tags})
        atomic_write(id_file, run_id)
        return run_id


def _study_parents(client: Any, experiment_id: str, study: str) -> list[Any]:
    """The study's parent runs in the experiment, oldest first."""
    quoted = study.replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id], f"tags.`{STUDY_TAG}` = '{quoted}' and tags.`tinyexp.role` = 'sweep'",
        max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def study_parent(client: Any, experiment_id: str, study: str, sweep_dir: Path, name: str,
                 tags: dict[str, str]) -> str:
    """The parent run of the Optuna study named ``study`` in the experiment: the oldest run
    tagged with it, else a new one (which yields to an older one created meanwhile)."""
    found = _study_parents(client, experiment_id, study)
    if found:
        return found[0].info.run_id
    mine = _create(client, experiment_id, name, {
        "tinyexp.role": "sweep", "tinyexp.sweep": sweep_dir.name,
        "tinyexp.sweep_dir": str(sweep_dir.resolve()), STUDY_TAG: study, **tags})
    winner = _study_parents(client, experiment_id, study)[0].info.run_id
    if winner != mine:
        client.delete_run(mine)
    return winner
