"""MLflow runs end with the status that says what happened; none is left RUNNING."""

from __future__ import annotations

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
