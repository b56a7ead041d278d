"""MLflow runs end with the status that says what happened; none is left RUNNING. Training
curves become metric histories, one step per epoch."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tinyexp import tracking


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
    (RuntimeError("boom"), "FAILED", "tinyexp.error"),
    (optuna.TrialPruned("hopeless"), "KILLED", "tinyexp.pruned"),
    (KeyboardInterrupt(), "KILLED", None),
])
def test_run_status_follows_how_the_job_ended(tmp_path, error, status, tag):
    with pytest.raises(type(error)), tracking.job_run(_cfg(tmp_path), "job", {}):
        raise error
    run = _only_run(tmp_path)
    assert run.info.status == status
    if tag:
        assert tag in run.data.tags


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
    cfg = OmegaConf.merge(_cfg(tmp_path), {"logger": {"name": "none"}})
    with tracking.job_run(cfg, "job", {}) as tracker:
        assert tracker.run_id is None
        assert tracker.curve_logger("baseline") is None  # train(on_epoch=None): no hook
        tracker.log_curve("baseline", {"train_loss": [1.0, math.nan], "val_loss": [2.0, 1.0]})
        tracker.log_metrics({"baseline/f1": 0.5, "bad": math.nan}, step=3)
        tracker.log_metrics({"baseline/f1": 0.5})
        tracker.set_tags({"a": "b"})
    assert not (tmp_path / "mlflow.db").exists()
