"""The Optuna sweeper: failures, kill and resume, constraints, results, MLflow (the search
space and the checks of the settings: ``test_settings.py``).

Most tests drive the sweeper through a throwaway Hydra app whose task fakes a tinyexp job
(returns the job contract's dict computed from its parameters, or raises, returns NaN, asks to
be pruned or SIGKILLs its own process, as the test plans by trial number); one runs the real
``python -m tinyexp -m search=memory_budget``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from support import ROOT, TINY, run_cli

APP = '''
import math
import os
import signal
from pathlib import Path

import hydra


def validate(cfg):
    if cfg.x > 1:
        raise ValueError(f"x: must be <= 1, got {cfg.x}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    number = cfg.optuna.trial_number
    with open("calls.txt", "a") as calls:
        calls.write(f"{number}\\n")
    if number in cfg.kill_on and not Path("killed").exists():
        Path("killed").touch()
        os.kill(os.getpid(), signal.SIGKILL)  # the whole sweep dies, as with the OOM killer
    if number in cfg.raise_on:
        raise RuntimeError(f"boom in trial {number}")
    if number in cfg.prune_on:
        import optuna

        study = optuna.load_study(study_name=cfg.optuna.study_name, storage=cfg.optuna.storage)
        trial = optuna.trial.Trial(study, cfg.optuna.trial_id)
        trial.report(0.1, 0)
        trial.report(0.05, 1)
        raise optuna.TrialPruned("told to stop")
    score = math.nan if number in cfg.nan_on else cfg.x
    big = number in cfg.big_on  # the best score, but far over the flash budget
    return {"objective": score, "final_stage": "quantized", "metrics": {
        "quantized/score": 10.0 if big else score,
        "quantized/flash_bytes": 10_000.0 if big else 1000 * cfg.x,
        "baseline/flash_bytes": 5000.0,
    }}


if __name__ == "__main__":
    main()
'''

CONFIG = """
defaults:
  - override hydra/sweeper: tinyexp_optuna
  - _self_
seed: 0
x: 0.5
kind: a
raise_on: []
nan_on: []
prune_on: []
kill_on: []
big_on: []
hydra:
  sweep:
    dir: sweep
    subdir: ${hydra.job.num}
  sweeper:
    validator: fake_app.validate
    study_name: fake
    n_trials: 5
    direction: maximize
    objectives: [final/score]
    constraints:
      - {metric: final/flash_bytes, max: 900}
    params:
      x: interval(0.0, 1.0)
      kind: choice(a, b, [1,2])
    heartbeat_interval: 1
    grace_period: 2
    max_failures: 4
    plots: false
"""


@pytest.fixture
def app(tmp_path):
    """Write the fake app into ``tmp_path``; return a function running it with overrides."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "fake_app.py").write_text(APP)

    def run(*overrides: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "fake_app.py", "-m", *overrides], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    return run


def _study(tmp_path: Path, name: str = "fake") -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def _calls(tmp_path: Path) -> list[int]:
    path = tmp_path / "calls.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _states(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


# ----------------------------------------------------------------------------- constraints


def test_optuna_samplers_read_constraints_set_on_the_trial():
    """Optuna 5 deprecates `constraints_func`: TPE and NSGA-II read `trial.set_constraint`.
    Guard against that changing under us (private helpers, on purpose)."""
    from optuna.samplers._tpe.sampler import _split_trials
    from optuna.samplers.nsgaii._constraints_evaluation import _constrained_dominates

    study = optuna.create_study(direction="maximize")
    for value, violation in ((0.9, 5.0), (0.5, -1.0), (0.4, -2.0)):
        trial = study.ask()
        trial.set_constraint("final/flash_bytes", violation)
        study.tell(trial, value)
    infeasible, good, worse = study.get_trials()
    below, above = _split_trials(study, study.get_trials(), n_below=1)
    assert [t.number for t in below] == [good.number]  # not the infeasible 0.9
    assert infeasible in above
    assert study.best_trial.number == good.number
    assert _constrained_dominates(worse, infeasible, study.directions)


# ----------------------------------------------------------------------------- fake jobs


def test_failures_are_recorded_and_the_search_completes(app, tmp_path):
    result = app("raise_on=[1]", "nan_on=[2]", "prune_on=[3]", "big_on=[4]",
                 "hydra.sweeper.plots=true")
    assert result.returncode == 0, result.stderr[-3000:]
    study = _study(tmp_path)
    assert _states(study) == {0: "COMPLETE", 1: "FAIL", 2: "FAIL", 3: "PRUNED", 4: "COMPLETE",
                              5: "COMPLETE", 6: "COMPLETE"}  # 5 = COMPLETE + PRUNED
    trials = study.get_trials()
    assert trials[1].user_attrs["error"] == "RuntimeError: boom in trial 1"
    assert trials[2].user_attrs["error"] == "ValueError: final/score is nan"
    assert trials[3].intermediate_values == {0: 0.1, 1: 0.05}
    assert trials[3].user_attrs["pruned"] == "TrialPruned: told to stop"

    big = trials[4]  # infeasible: recorded with its numbers and its constraint
    assert big.value == 10.0 and big.user_attrs["final/flash_bytes"] == 10_000.0
    assert big.constraints == {"final/flash_bytes": 10_000.0 - 900}
    assert big.user_attrs["feasible"] is False and big.user_attrs["max/final/flash_bytes"] == 900
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        flash = trial.user_attrs["final/flash_bytes"]
        assert trial.constraints == {"final/flash_bytes": pytest.approx(flash - 900)}
        assert trial.user_attrs["final_stage"] == "quantized"
        assert trial.user_attrs["job_dir"] == str(tmp_path / "sweep" / str(trial.number))
    best = study.best_trial
    assert best.number != 4 and best.user_attrs["feasible"] is True

    # One folder per launched trial, named by its number; the job got its trial.
    for number in range(7):
        overrides = yaml.safe_load((tmp_path / "sweep" / str(number) / ".hydra" /
                                    "overrides.yaml").read_text())
        assert f"+optuna.trial_number={number}" in overrides
    lines = [line for line in result.stdout.splitlines() if line.startswith("[optuna] trial")]
    assert len(lines) == 7 and "FAIL  RuntimeError: boom in trial 1" in lines[1]
    assert "feasible NO" in lines[4] and f"best feasible: #{best.number}" in lines[-1]

    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_feasible"]["number"] == best.number
    assert results["best_value"] == best.value
    assert results["trials"] == {"complete": 4, "pruned": 1, "fail": 2}
    csv = (tmp_path / "sweep" / "trials.csv").read_text().splitlines()
    assert len(csv) == 1 + 7 and "user_attrs_error" in csv[0]
    assert (tmp_path / "sweep" / "optimization_history.png").stat().st_size > 0
    assert (tmp_path / "sweep" / "param_importances.png").stat().st_size > 0
    assert not list((tmp_path / "sweep").glob(".*.tmp"))


@pytest.mark.slow  # end to end, ~10 s: the slow tier
def test_killed_search_resumes_without_redoing_finished_trials(app, tmp_path):
    killed = app("kill_on=[2]", "hydra.sweeper.n_trials=4")
    assert killed.returncode == -9
    assert _calls(tmp_path) == [0, 1, 2]
    assert _states(_study(tmp_path)) == {0: "COMPLETE", 1: "COMPLETE", 2: "RUNNING"}
    first = (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").stat().st_mtime_ns

    time.sleep(3.5)  # > grace_period (2 s): trial 2's heartbeat is stale
    resumed = app("kill_on=[2]", "hydra.sweeper.n_trials=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "reclaimed trial(s) 2" in resumed.stdout
    assert "2/4 trials finished, resuming" in resumed.stdout
    study = _study(tmp_path)
    assert _states(study) == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE",
                              4: "COMPLETE"}
    assert _calls(tmp_path) == [0, 1, 2, 3, 4]  # only the two missing trials ran
    assert (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").stat().st_mtime_ns == first
    # A resumed TPE is reseeded: it does not replay the start-up points it already has.
    xs = [t.params["x"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(set(xs)) == len(xs)

    again = app("kill_on=[2]", "hydra.sweeper.n_trials=4")
    assert again.returncode == 0 and "4/4 trials finished" in again.stdout
    assert len(_calls(tmp_path)) == 5


def test_a_broken_setup_stops_after_max_failures_in_a_row(app, tmp_path):
    result = app("raise_on=[0,1,2,3,4,5,6]", "hydra.sweeper.max_failures=3")
    assert result.returncode == 1
    assert "search stopped after 3 failed trials in a row" in result.stderr
    assert list(_states(_study(tmp_path)).values()) == ["FAIL"] * 3
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_feasible"] is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["x=interval(0.0, 2.0)"], "tinyexp: error: x: must be <= 1, got 2.0 "
                               "[in search space point: kind=a x=2.0]"),
    # a setting taken from another key is reported under the key the user typed
    (["+trials=abc", "hydra.sweeper.n_trials=${trials}"],
     "tinyexp: error: trials: must be an int >= 1"),
    (["hydra.sweeper.storage=sqlite://"], "tinyexp: error: hydra.sweeper.storage: "),
    (["hydra.sweeper.direction=[maximize,minimize]"],
     "tinyexp: error: hydra.sweeper.objectives: one per direction"),
    (["hydra.sweeper.constraints=[{metric:final/flash_bytes}]"],
     "tinyexp: error: hydra.sweeper.constraints:"),
])
def test_bad_search_fails_before_any_trial(app, tmp_path, overrides, message):
    result = app(*overrides)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tinyexp")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert _calls(tmp_path) == [] and not (tmp_path / "sweep" / "optuna.db").exists()


@pytest.mark.slow  # ~12 s: the slow tier (the fast tier stays under 10 minutes)
def test_two_objectives_give_the_feasible_pareto_front(app, tmp_path):
    result = app("big_on=[1]", "hydra/sweeper/sampler=nsgaii", "hydra/sweeper/pruner=nop",
                 "hydra.sweeper.sampler.population_size=2", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.direction=[maximize,minimize]",
                 "hydra.sweeper.objectives=[final/score,final/flash_bytes]",
                 "hydra.sweeper.plots=true")
    assert result.returncode == 0, result.stderr[-3000:]
    study = _study(tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    # score = x and flash = 1000 x: every feasible trial is a trade-off; trial 1 is over budget.
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    front = {s["number"] for s in results["solutions"]}
    feasible = {t.number for t in study.get_trials() if t.user_attrs["feasible"]}
    assert 1 not in feasible and front == feasible
    assert (tmp_path / "sweep" / "pareto_front.png").stat().st_size > 0
    assert "Pareto #0" in result.stdout


# ----------------------------------------------------------------------------- the real thing


@pytest.mark.slow  # end to end, ~20 s: the slow tier
def test_memory_budget_search_end_to_end(tmp_path):
    sweep = tmp_path / "search"
    result = run_cli(["-m", "search=memory_budget", "target=tiny", "hydra.sweeper.n_trials=3",
                      *TINY, f"hydra.sweep.dir={sweep}", "cache_dir=cache"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="memory_budget-tiny-sensors-cnn",
                              storage=f"sqlite:///{sweep / 'optuna.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:
        assert set(trial.params) == {"prune.ratio", "quant", "arch.channels"}
        assert set(trial.constraints) == {"final/flash_bytes", "final/ram_bytes"}
        assert trial.user_attrs["max/final/flash_bytes"] == 131072
        assert trial.user_attrs["final/ram_bytes"] > 0
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        stage = trial.user_attrs["final_stage"]
        assert trial.value == pytest.approx(metrics[f"{stage}/f1"])
        assert trial.user_attrs["final/flash_bytes"] == metrics[f"{stage}/flash_bytes"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tinyexp.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert study.user_attrs["tinyexp.mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.metrics["optuna/n_complete"] == 3
    assert "optuna/best/final/f1" in parent.data.metrics
    assert parent.data.tags["tinyexp.optuna.study"] == "memory_budget-tiny-sensors-cnn"
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_results.yaml", "trials.csv", "optimization_history.png"} <= files
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["tinyexp.trial"]) for r in children) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" for r in children)


@pytest.mark.slow  # end to end, ~10 s: the slow tier
def test_a_trial_that_raises_is_failed_in_optuna_and_mlflow(tmp_path):
    # A search space with a point that breaks inside the job (after its MLflow run started):
    # a callback whose training raises. The search must go on and finish its trials.
    sweep = tmp_path / "search"
    result = run_cli(["-m", "search=memory_budget", "search.n_trials=2", *TINY,
                      "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=nop",
                      "prune.ratio=0.5", "quant=none", "arch.channels=[32,16]",
                      "callbacks.early_stopping._target_=choice(pytorch_lightning.callbacks."
                      "EarlyStopping,failing_callback.FailingEarlyStopping)",
                      f"hydra.sweep.dir={sweep}", "cache_dir=cache"], tmp_path,
                     env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name=optuna.get_all_study_names(
        f"sqlite:///{sweep / 'optuna.db'}")[0], storage=f"sqlite:///{sweep / 'optuna.db'}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert failed and all("FailingEarlyStopping" in t.user_attrs["error"] for t in failed)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tinyexp").experiment_id])
    by_trial = {int(r.data.tags["tinyexp.trial"]): r
                for r in runs if "tinyexp.trial" in r.data.tags}
    for trial in failed:
        assert by_trial[trial.number].info.status == "FAILED"
        assert "FailingEarlyStopping" in by_trial[trial.number].data.tags["tinyexp.error"]
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_memory_budget_search_with_deploy_is_judged_on_tflite_micro(tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("tflite_micro")
    sweep = tmp_path / "search"
    result = run_cli(["-m", "search=memory_budget", "target=tiny", "deploy=tflm",
                      "hydra.sweeper.n_trials=2", *TINY, "measure.latency_runs=5",
                      f"hydra.sweep.dir={sweep}", "cache_dir=cache", "logger=none"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="memory_budget-tiny-sensors-cnn",
                              storage=f"sqlite:///{sweep / 'optuna.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    for trial in complete:
        assert trial.params["quant"] in ("none", "int8", "int16x8")  # the modes TFLM runs
        assert trial.user_attrs["final_stage"] == "deployed"
        tflite = sweep / str(trial.number) / "deployed.tflite"
        assert trial.user_attrs["final/flash_bytes"] == tflite.stat().st_size
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert trial.user_attrs["final/ram_bytes"] == metrics["deployed/arena_bytes"]


@pytest.mark.slow
def test_pareto_search_end_to_end(tmp_path):
    sweep = tmp_path / "search"
    result = run_cli(["-m", "search=pareto", "target=tiny", "hydra.sweeper.n_trials=4",
                      "hydra.sweeper.sampler.population_size=2", *TINY,
                      f"hydra.sweep.dir={sweep}", "cache_dir=cache"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["objectives"] == ["final/f1", "final/flash_bytes"]
    for solution in results["solutions"]:
        assert solution["user_attrs"]["feasible"] is True
    assert (sweep / "pareto_front.png").exists()
