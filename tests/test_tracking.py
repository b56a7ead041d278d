"""MLflow runs end with the status that says what happened; none is left RUNNING, and a run
whose process was killed outright is reaped by the next start. Training curves become metric
histories, one step per epoch."""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tinyexp import tracking
from tinyexp.interrupts import Interrupted, process_start


@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.client_for(f"sqlite:///{path}")
    return path


@pytest.fixture(autouse=True)
def _empty_store(tmp_path, _template):
    """Each test starts from its own empty store, a copy: MLflow's schema migrations that build
    a new one take a second of CPU each."""
    shutil.copy(_template, tmp_path / "mlflow.db")


def _cfg(tmp_path):
    return OmegaConf.create({"seed": 0, "logger": {
        "name": "mlflow", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "experiment_name": "t"}})


def _only_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize(("error", "status", "tag"), [
    (RuntimeError("boom"), "FAILED", ("tinyexp.error", "RuntimeError: boom")),
    (optuna.TrialPruned("hopeless"), "KILLED", ("tinyexp.pruned", "1")),
    (KeyboardInterrupt(), "KILLED", ("tinyexp.interrupted", "SIGINT")),
    (Interrupted("SIGINT"), "KILLED", ("tinyexp.interrupted", "SIGINT")),
    (Interrupted("SIGTERM"), "KILLED", ("tinyexp.interrupted", "SIGTERM")),
    # Lightning's own SIGTERM exception, should it reach the run (a SystemExit with status 0)
    (SIGTERMException(), "KILLED", ("tinyexp.interrupted", "SIGTERM")),
])
def test_run_status_follows_how_the_job_ended(tmp_path, error, status, tag):
    with pytest.raises(type(error)), tracking.job_run(_cfg(tmp_path), "job", {}):
        raise error
    run = _only_run(tmp_path)
    assert run.info.status == status
    assert run.data.tags[tag[0]] == tag[1]
    assert "tinyexp.error" not in run.data.tags or status == "FAILED"


def test_every_run_names_its_process(tmp_path):
    with tracking.job_run(_cfg(tmp_path), "job", {}):
        pass
    tags = _only_run(tmp_path).data.tags
    assert tags["tinyexp.host"] == socket.gethostname()
    assert tags["tinyexp.pid"] == str(os.getpid())
    assert tags["tinyexp.pid_start"] == process_start() != None  # noqa: E711 (Linux: /proc)


def test_finished_run_has_params_and_parent_helpers_log_to_it(tmp_path):
    cfg = _cfg(tmp_path)
    parent = tracking.sweep_parent_run(cfg, tmp_path / "sweep", "study")
    assert parent == tracking.sweep_parent_run(cfg, tmp_path / "sweep", "study")  # found again
    tracking.log_to_run(cfg, parent, metrics={"best/f1": 0.5}, params={"best.ratio": "0.3"},
                        tags={"tinyexp.best_trial": "4"})
    run = MlflowClient(cfg.logger.tracking_uri).get_run(parent)
    assert run.data.metrics["best/f1"] == 0.5 and run.data.params["best.ratio"] == "0.3"
    assert run.info.status == "FINISHED"


def test_the_config_becomes_dotted_params_and_every_finite_metric_is_logged(tmp_path):
    cfg = OmegaConf.merge(_cfg(tmp_path), {"prune": {"ratio": 0.5, "round_to": None},
                                           "arch": {"channels": [32, 16]}})
    metrics = {f"m/{i}": float(i) for i in range(501)}  # more than one batch of 500
    metrics.update({"bad/nan": float("nan"), "bad/inf": float("inf"), "bad/none": None})
    with tracking.job_run(cfg, "job", {"tinyexp.arch": "cnn"}) as tracker:
        tracker.log_metrics(metrics)
    run = _only_run(tmp_path)
    assert run.data.params["prune.ratio"] == "0.5"
    assert run.data.params["prune.round_to"] == "None"
    assert run.data.params["arch.channels"] == "[32, 16]"  # lists stay whole
    assert run.data.params["logger.experiment_name"] == "t"
    assert run.data.tags["tinyexp.arch"] == "cnn" and run.info.run_name == "job"
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("m/")} == {
        f"m/{i}": float(i) for i in range(501)}
    assert not [k for k in run.data.metrics if k.startswith("bad/")]
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
        run.info.run_id, "m/7")
    assert abs(history[0].timestamp - run.info.start_time) < 60_000  # milliseconds, not seconds


# ----------------------------------------------------------------------------- curves


def _history(tmp_path, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_replayed_curve_becomes_histories_with_one_step_per_epoch(tmp_path):
    curve = {"train_loss": [0.9, 0.5, 0.4], "val_loss": [1.0, math.nan, 0.7]}
    with tracking.job_run(_cfg(tmp_path), "job", {}) as tracker:
        tracker.log_curve("baseline", curve)
        tracker.log_curve("prune_step1", {"train_loss": [], "val_loss": []})  # trained 0 epochs
    run_id = _only_run(tmp_path).info.run_id
    assert _history(tmp_path, run_id, "curves/baseline/train_loss") == [
        (1, 0.9), (2, 0.5), (3, 0.4)]
    # A NaN epoch is left out rather than failing the job; its step stays a gap.
    assert _history(tmp_path, run_id, "curves/baseline/val_loss") == [(1, 1.0), (3, 0.7)]
    assert not [k for k in _only_run(tmp_path).data.metrics if "prune_step1" in k]


def test_the_curve_logger_logs_each_epoch_while_the_run_is_live(tmp_path):
    with tracking.job_run(_cfg(tmp_path), "job", {}) as tracker:
        log_epoch = tracker.curve_logger("prune_step2")
        log_epoch(1, {"train_loss": 0.8, "val_loss": 0.9})
        log_epoch(2, {"train_loss": math.inf, "val_loss": 0.6})
        assert _only_run(tmp_path).info.status == "RUNNING"  # seen before the job ends
        assert _history(tmp_path, tracker.run_id, "curves/prune_step2/val_loss") == [
            (1, 0.9), (2, 0.6)]
    assert _history(tmp_path, tracker.run_id, "curves/prune_step2/train_loss") == [(1, 0.8)]
    assert tracking.curve_key("qat", "val_loss") == "curves/qat/val_loss"


@pytest.mark.usefixtures("single_thread")
def test_training_logs_its_curve_into_the_run_epoch_by_epoch(tmp_path, compose_cfg):
    from tinyexp.lit import train
    from tinyexp.pipeline import build_datamodule, build_net

    cfg = compose_cfg(["trainer=smoke", "dataset.train_steps=640", "dataset.test_steps=640",
                       f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                       "logger.experiment_name=t"])
    datamodule = build_datamodule(cfg)
    with tracking.job_run(cfg, "job", {}) as tracker:
        info = train(build_net(cfg, datamodule), datamodule, cfg,
                     on_epoch=tracker.curve_logger("baseline"))
    for name, values in info["curve"].items():
        assert _history(tmp_path, tracker.run_id, f"curves/baseline/{name}") == [
            (epoch, pytest.approx(v)) for epoch, v in enumerate(values, start=1)]
    assert len(info["curve"]["val_loss"]) == info["epochs"] == cfg.trainer.max_epochs


def test_without_mlflow_the_tracker_takes_every_call_and_logs_nothing(tmp_path):
    tmp_path = tmp_path / "no_store"
    cfg = OmegaConf.merge(_cfg(tmp_path), {"logger": {"name": "none"}})
    with tracking.job_run(cfg, "job", {}) as tracker:
        assert tracker.run_id is None
        assert tracker.curve_logger("baseline") is None  # train(on_epoch=None): no hook
        tracker.log_curve("baseline", {"train_loss": [1.0, math.nan], "val_loss": [2.0, 1.0]})
        tracker.log_metrics({"baseline/f1": 0.5, "bad": math.nan}, step=3)
        tracker.log_metrics({"baseline/f1": 0.5})
        tracker.set_tags({"a": "b"})
    assert not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- orphans


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_runs_left_running_by_a_gone_process_of_this_host_are_reaped(tmp_path, caplog):
    client = tracking.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    host, dead = socket.gethostname(), _dead_pid()
    experiments = [client.create_experiment(name) for name in ("a", "b")]

    def run(experiment: str, **tags: str | int) -> str:
        return client.create_run(experiment, run_name="r", tags={
            f"tinyexp.{k}": str(v) for k, v in tags.items()}).info.run_id

    gone = run(experiments[0], host=host, pid=dead)
    reused = run(experiments[1], host=host, pid=os.getpid(), pid_start="1")  # pid reused since
    alive = run(experiments[1], host=host, pid=os.getpid(), pid_start=process_start())
    elsewhere = run(experiments[0], host="another-host", pid=dead)
    untagged = run(experiments[0])
    closed = run(experiments[0], host=host, pid=dead)
    client.set_terminated(closed, "FINISHED")

    with caplog.at_level(logging.DEBUG, logger="tinyexp.tracking"):
        assert sorted(tracking.reap_orphans(client)) == sorted([gone, reused])
    status = {r: client.get_run(r).info.status
              for r in (gone, reused, alive, elsewhere, untagged, closed)}
    assert status == {gone: "KILLED", reused: "KILLED", alive: "RUNNING",
                      elsewhere: "RUNNING", untagged: "RUNNING", closed: "FINISHED"}
    assert client.get_run(gone).data.tags["tinyexp.error"] == (
        f"process {dead} on {host} ended without closing the run (killed)")
    ours = [r for r in caplog.records if r.name == "tinyexp.tracking"]
    infos = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert len(infos) == 2 and all("marked KILLED" in line for line in infos)
    assert [r.levelno for r in ours if elsewhere in r.getMessage()] == [logging.DEBUG]
    assert tracking.reap_orphans(client) == []  # nothing left to reap


@pytest.mark.parametrize("start", ["job", "sweep"])
def test_a_job_or_a_sweep_starting_reaps_first(tmp_path, start):
    cfg = _cfg(tmp_path)
    client = tracking.client_for(cfg.logger.tracking_uri)
    orphan = client.create_run(client.create_experiment("t"), tags={
        "tinyexp.host": socket.gethostname(), "tinyexp.pid": str(_dead_pid())}).info.run_id
    if start == "job":
        with tracking.job_run(cfg, "job", {}):
            assert client.get_run(orphan).info.status == "KILLED"
    else:
        tracking.sweep_parent_run(cfg, tmp_path / "sweep", "study")
        assert client.get_run(orphan).info.status == "KILLED"


def test_reaping_that_fails_does_not_stop_the_job(tmp_path, monkeypatch, caplog):
    def broken(client):
        raise RuntimeError("store busy")

    monkeypatch.setattr(tracking, "reap_orphans", broken)
    with caplog.at_level(logging.WARNING, logger="tinyexp.tracking"), \
            tracking.job_run(_cfg(tmp_path), "job", {}):
        pass
    assert _only_run(tmp_path).info.status == "FINISHED"
    assert "store busy" in caplog.text
