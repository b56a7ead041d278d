"""MLflow tracking: the only module that imports mlflow.

One job is one MLflow run. Runs of a multirun hang under one parent run (``mlflow.parentRunId``)
and carry a ``tinyexp.sweep`` tag, so the UI lists them side by side. A run that raises ends
FAILED, an interrupted one KILLED (tagged ``tinyexp.interrupted: SIGINT|SIGTERM``).

A process killed outright (SIGKILL, out of memory) cannot close its run: runs record their
process, and the next start against the store marks KILLED those whose process of this host is
gone (:func:`reap_orphans`). A new SQLite store is created under a file lock.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tinyexp import parents
from tinyexp.files import file_lock
from tinyexp.interrupts import deferred, interrupted_by, process_gone, process_start

log = logging.getLogger(__name__)


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """``{"prune": {"ratio": 0.5}}`` -> ``{"prune.ratio": "0.5"}`` (lists stay whole)."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: str(node)}


def curve_key(stage: str, name: str) -> str:
    """The metric a training curve is logged under: ``curves/prune_step1/val_loss``."""
    return f"curves/{stage}/{name}"


class NullTracker:
    """Used with ``logger=none``: results go to the job's folder only."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        pass

    def log_curve(self, stage: str, curve: dict[str, list[float]]) -> None:
        pass

    def curve_logger(self, stage: str) -> Callable[[int, dict[str, float]], None] | None:
        return None

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


class MlflowTracker:
    """Writes to one MLflow run through an explicit client (no global active run).

    Values that are None, NaN or infinite are not logged: MLflow would keep a NaN but store an
    infinity as +-1.8e308, which flattens any chart it appears in. A curve with a diverged
    epoch shows a gap at that step instead (the training info and the cached baseline's
    ``train.json`` keep the value itself).
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def _log_points(self, points: list[tuple[str, Any, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value, step in points
                 if value is not None and math.isfinite(float(value))]
        for start in range(0, len(batch), 500):  # MLflow takes at most 1000 metrics a request
            self.client.log_batch(self.run_id, metrics=batch[start:start + 500])

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` (0 if None), in as few requests as MLflow allows."""
        self._log_points([(key, value, step or 0) for key, value in metrics.items()])

    def log_curve(self, stage: str, curve: dict[str, list[float]]) -> None:
        """Log a whole training curve at once, value i at step i + 1 (the epoch), under
        ``curves/<stage>/<name>``: the replay of a curve trained in an earlier job."""
        self._log_points([(curve_key(stage, name), value, epoch)
                          for name, values in curve.items()
                          for epoch, value in enumerate(values, start=1)])

    def curve_logger(self, stage: str) -> Callable[[int, dict[str, float]], None]:
        """The ``on_epoch`` hook of :func:`tinyexp.lit.train` that logs each epoch as it ends,
        so a training that crashes or is stopped still shows its curve so far."""

        def log_epoch(epoch: int, values: dict[str, float]) -> None:
            self.log_metrics({curve_key(stage, name): v for name, v in values.items()}, epoch)

        return log_epoch

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another job created it between our two calls (RESOURCE_ALREADY_EXISTS)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:  # not that: a real error
            raise
        return experiment.experiment_id


def _client(cfg: DictConfig) -> Any:
    return client_for(cfg.logger.get("tracking_uri"))


def client_for(tracking_uri: str | None) -> Any:
    """A client for ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default.

    MLflow builds a store when the client is made (``SqlAlchemyStore.__init__``): it creates
    the tables of a new database, runs the migrations and adds the Default experiment, with no
    lock, and two processes doing that at once fail (``duplicate column name``, alembic
    ``CommandError``). For a SQLite file the first client of each process is made under
    ``<db file>.lock``, so the second process finds the schema complete; and a Ctrl-C waits
    for it, as a migration cut short leaves a store MLflow refuses to open.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    database = _sqlite_file(uri)
    if database is None or uri in _OPENED:
        return MlflowClient(tracking_uri=uri)
    with file_lock(f"{database}.lock"), deferred():
        client = MlflowClient(tracking_uri=uri)
        client.get_experiment_by_name("Default")  # should a later MLflow build stores lazily
    _OPENED.add(uri)
    return client


_OPENED: set[str] = set()  # the SQLite stores this process has opened


def _sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:`` URI, None for any other store or an in-memory one."""
    from sqlalchemy.engine import make_url

    database = make_url(uri).database if uri.startswith("sqlite:") else None
    return database if database and not database.startswith((":memory:", "file:")) else None


def process_tags() -> dict[str, str]:
    """The tags naming the process a run belongs to: ``tinyexp.host``, ``tinyexp.pid`` and
    ``tinyexp.pid_start`` (its start time; left out where there is no ``/proc``)."""
    tags = {"tinyexp.host": socket.gethostname(), "tinyexp.pid": str(os.getpid())}
    start = process_start()
    if start is not None:
        tags["tinyexp.pid_start"] = start
    return tags


def _pages(search: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every result of a paged MLflow search; ``search(page_token)`` returns one page."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _running_runs(client: Any) -> Iterator[Any]:
    """Every RUNNING run of the store, in every experiment."""
    ids = [e.experiment_id for e in _pages(
        lambda token: client.search_experiments(max_results=1000, page_token=token))]
    for first in range(0, len(ids), 100):
        yield from _pages(lambda token, first=first: client.search_runs(
            ids[first:first + 100], "attributes.status = 'RUNNING'", max_results=1000,
            page_token=token))


def reap_orphans(client: Any) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process of this host that is gone; their ids.

    A run is reaped when its ``tinyexp.host`` is this host and its process (``tinyexp.pid``,
    started at ``tinyexp.pid_start``) no longer runs; ``tinyexp.error`` then says so. Runs of
    other hosts, and runs without these tags, are left alone: their processes cannot be seen
    from here.
    """
    host, reaped = socket.gethostname(), []
    for run in _running_runs(client):
        tags, run_id = run.data.tags, run.info.run_id
        if tags.get("tinyexp.host") != host:
            log.debug("run %s is RUNNING on host %s, not this one (%s): left alone", run_id,
                      tags.get("tinyexp.host", "(unknown)"), host)
            continue
        pid = tags.get("tinyexp.pid", "")
        if not pid.isdigit() or not process_gone(int(pid), tags.get("tinyexp.pid_start")):
            continue
        client.set_tag(run_id, "tinyexp.error",
                       f"process {pid} on {host} ended without closing the run (killed)")
        client.set_terminated(run_id, "KILLED")
        log.info("run %s (%s) was left RUNNING by process %s, which has ended: marked KILLED",
                 run_id, run.info.run_name, pid)
        reaped.append(run_id)
    return reaped


def _reap_quietly(client: Any) -> None:
    # Tidying up after other processes must never stop this one.
    try:
        reap_orphans(client)
    except Exception as err:
        log.warning("could not check for runs left RUNNING: %r", err)


def sweep_parent_run(cfg: DictConfig, sweep_dir: Path, name: str,
                     study: str | None = None) -> str | None:
    """Get or create the parent run of a sweep, or of the Optuna study named ``study`` (None
    when ``logger=none``).

    A sweeper calls this before its first job so the experiment and the parent exist up
    front; the jobs then find the same parent: a sweep's through the sweep folder, a study's
    through the tracking server (:mod:`tinyexp.parents`).
    """
    if cfg.logger.name != "mlflow":
        return None
    client = _client(cfg)
    _reap_quietly(client)
    experiment_id = _experiment_id(client, cfg.logger.experiment_name)
    if study:
        return parents.study_parent(client, experiment_id, study, Path(sweep_dir), name,
                                    process_tags())
    return parents.sweep_parent(client, experiment_id, Path(sweep_dir), name, process_tags())


def log_to_run(cfg: DictConfig, run_id: str, metrics: dict[str, float] | None = None,
               params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
               artifacts: list[Path] | None = None) -> None:
    """Add metrics, params, tags and files to an existing run (a sweep's parent, say)."""
    if cfg.logger.name != "mlflow" or run_id is None:
        return
    tracker = MlflowTracker(_client(cfg), run_id)
    tracker.log_metrics(metrics or {})
    tracker.set_tags(tags or {})
    for key, value in (params or {}).items():
        tracker.client.log_param(run_id, key, str(value)[:6000])
    for path in artifacts or []:
        tracker.log_artifact(Path(path))


@contextmanager
def job_run(cfg: DictConfig, run_name: str, tags: dict[str, str],
            sweep_dir: Path | None = None) -> Iterator[NullTracker | MlflowTracker]:
    """Open the job's MLflow run (or a no-op tracker), log the config, close it with a status.

    First reaps the orphans of the store (:func:`reap_orphans`). The run records this process
    (:func:`process_tags`) and ends FINISHED, FAILED (``tinyexp.error``), or KILLED when the job
    was interrupted (``tinyexp.interrupted: SIGINT|SIGTERM``) or pruned by a search
    (``tinyexp.pruned``). A signal cannot cut creating or closing the run short.

    Args:
        cfg: the resolved job config; logged flattened as params.
        run_name: what the run is, e.g. ``sensors-cnn-l1@0.5-none``.
        tags: searchable tags (dataset, arch, pruning, quantization, ...).
        sweep_dir: the multirun folder when the job is part of one.
    """
    if cfg.logger.name != "mlflow":
        yield NullTracker()
        return
    import mlflow

    client = _client(cfg)
    _reap_quietly(client)
    experiment_id = _experiment_id(client, cfg.logger.experiment_name)
    tags = {**tags, **process_tags()}
    if sweep_dir is not None:
        tags["tinyexp.sweep"] = sweep_dir.name
        # a trial of an Optuna study: the study's parent, wherever its sweeper runs
        study = OmegaConf.select(cfg, "optuna.study_name", default=None) \
            if OmegaConf.select(cfg, "optuna.trial_id", default=None) is not None else None
        tags["mlflow.parentRunId"] = parents.study_parent(
            client, experiment_id, study, sweep_dir, f"optuna {study}", process_tags()) \
            if study else parents.sweep_parent(
            client, experiment_id, sweep_dir, f"sweep {sweep_dir.parent.name}/{sweep_dir.name}",
            process_tags())
    tracker = None
    try:
        with deferred():  # a signal now is raised once the run exists and this try holds it
            run = client.create_run(experiment_id, run_name=run_name, tags=tags)
            tracker = MlflowTracker(client, run.info.run_id)
        params = flatten(OmegaConf.to_container(cfg, resolve=True))
        items = [mlflow.entities.Param(k, v[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a request
            client.log_batch(run.info.run_id, params=items[start:start + 100])
        yield tracker
    except BaseException as err:
        if tracker is not None:
            with deferred():
                client.set_terminated(tracker.run_id, _end_status(tracker, err))
        raise
    else:
        with deferred():
            client.set_terminated(tracker.run_id, "FINISHED")


def _end_status(tracker: MlflowTracker, err: BaseException) -> str:
    """The status a run ends with after ``err``; tags the run with the reason."""
    stop = interrupted_by(err)
    if stop is not None:
        tracker.set_tags({"tinyexp.interrupted": stop.signal_name})
        return "KILLED"
    if type(err).__name__ == "TrialPruned":  # an Optuna search stopped a hopeless trial
        tracker.set_tags({"tinyexp.pruned": "1", "tinyexp.pruned_reason": str(err)[:5000]})
        return "KILLED"
    tracker.set_tags({"tinyexp.error": f"{type(err).__name__}: {err}"[:5000]})
    return "FAILED"


# ----------------------------------------------------------------------------- reading runs


def find_runs(tracking_uri: str | None, experiment_name: str,
              filter_string: str = "") -> list[dict[str, Any]]:
    """Runs of an experiment matching an MLflow filter, oldest first, as plain dicts.

    Each dict has ``run_id``, ``name``, ``status``, ``experiment_id`` and the run's ``tags``,
    ``params`` and ``metrics`` (latest value of each).

    Raises:
        LookupError: if the experiment does not exist or MLflow rejects the filter.
    """
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment named {experiment_name!r} in "
                          f"{client.tracking_uri}")
    try:
        found = list(_pages(lambda token: client.search_runs(
            [experiment.experiment_id], filter_string, max_results=1000,
            order_by=["attributes.start_time ASC"], page_token=token)))
    except MlflowException as err:  # a malformed filter: say so in one line
        raise LookupError(f"MLflow rejects the filter {filter_string!r}: "
                          f"{str(err).splitlines()[0]}") from None
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "experiment_id": r.info.experiment_id, "tags": dict(r.data.tags),
             "params": dict(r.data.params), "metrics": dict(r.data.metrics)} for r in found]


def log_report_run(tracking_uri: str | None, experiment_name: str, run_name: str,
                   tags: dict[str, str], files: list[Path], folder: str = "report") -> str:
    """Create a run holding a report's files as artifacts under ``folder``; return its id.

    The run ends FINISHED once every file is stored, or FAILED if storing one fails.
    """
    client = client_for(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name)
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"tinyexp.role": "report", **tags, **process_tags()})
    try:
        for path in files:
            client.log_artifact(run.info.run_id, str(path), folder)
    except BaseException as err:
        client.set_tag(run.info.run_id, "tinyexp.error", f"{type(err).__name__}: {err}"[:5000])
        client.set_terminated(run.info.run_id, "KILLED" if interrupted_by(err) else "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
