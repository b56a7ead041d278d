"""The sweeper end to end, through a throwaway Hydra app run as a subprocess: what this package
adds to hydra-optuna-sweeper (``tests/contract/`` checks what it shares with it).

The app's task returns what ``cfg.returns`` says (a float, a list, a ``JobResult`` or its dict),
raises for the trial numbers in ``raise_on``, and prunes itself through the trial node.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

APP = '''
import json
import time
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from hydra_plugins.hydra_optuna5_sweeper import JobResult


class Hooks:
    """A callback: records the hooks it got."""

    def on_study_start(self, sweeper, study):
        Path("hooks.txt").open("a").write(f"start {sweeper.study_name}\\n")

    def on_study_end(self, sweeper, study, results, files):
        names = sorted(Path(f).name for f in files)
        Path("hooks.txt").open("a").write(f"end {results['name']} {names}\\n")


def configure(cfg, trial):
    trial.suggest_float("+w", 0.0, 1.0)


def validate(cfg):
    if cfg.x > 3:
        raise ValueError(f"x: must be <= 3, got {cfg.x}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    time.sleep(cfg.get("sleep", 0))
    number = OmegaConf.select(cfg, "trial.trial_number")
    if number is not None and number in cfg.raise_on:
        raise RuntimeError(f"boom in trial {number}")
    if number is not None and number in cfg.prune_on:
        import optuna

        study = optuna.load_study(study_name=cfg.trial.study_name, storage=cfg.trial.storage)
        trial = optuna.trial.Trial(study, cfg.trial.trial_id)
        trial.report(1.0, 0)
        raise optuna.TrialPruned("told to stop")
    value = (cfg.x - 1) ** 2 + cfg.get("w", 0.0)
    if cfg.returns == "float":
        return value
    if cfg.returns == "pair":
        return value, -cfg.x
    result = JobResult(objective=value, final_stage="s",
                       metrics={"s/loss": value, "s/size": 10 * cfg.x})
    return result if cfg.returns == "result" else result.to_dict()


if __name__ == "__main__":
    main()
'''

CONFIG = """
defaults:
  - override hydra/sweeper: optuna5
  - _self_
x: 0
returns: float
raise_on: []
prune_on: []
hydra:
  sweep:
    dir: sweep
    subdir: ${hydra.job.num}
  sweeper:
    n_trials: 4
    sampler:
      seed: 0
    params:
      x: range(0, 3)
"""


@pytest.fixture
def app(tmp_path):
    """Write the app into ``tmp_path``; return a function running it with overrides."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(APP)

    def run(*overrides: str, multirun: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        args = [sys.executable, "app.py", *(["-m"] if multirun else []), *overrides]
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=180)

    return run


def _results(tmp_path: Path) -> dict:
    return yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())


def test_a_float_objective_in_memory_as_hydra_optuna_sweeper_runs_it(app, tmp_path):
    result = app()
    assert result.returncode == 0, result.stderr[-3000:]
    results = _results(tmp_path)
    assert results["name"] == "optuna" and results["storage"] is None
    assert results["best_value"] == (results["best_params"]["x"] - 1) ** 2
    assert results["trials"] == {"complete": 4}
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == \
        ["0", "1", "2", "3"]
    assert "[optuna] trial 3 COMPLETE" in result.stdout


def test_the_optuna_name_is_registered_when_hydra_optuna_sweeper_is_not_installed(app):
    result = app("hydra/sweeper=optuna", "--cfg", "hydra", "-p", "hydra.sweeper",
                 multirun=False)
    assert result.returncode == 0, result.stderr[-3000:]
    node = yaml.safe_load(result.stdout)
    assert node["_target_"] == "hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper.OptunaSweeper"
    assert node["n_jobs"] == 2 and node["max_failure_rate"] == 0.0
    assert node["pruner"]["_target_"] == "optuna.pruners.NopPruner"


def test_a_failed_job_stops_the_sweep_past_max_failure_rate(app, tmp_path):
    result = app("raise_on=[1]", "hydra.sweeper.n_jobs=1", "hydra.sweeper.trial_node=trial")
    assert result.returncode != 0
    assert "RuntimeError: boom in trial 1" in result.stderr
    assert "Failed 1 times out of 1 with max_failure_rate=0.0." in result.stdout
    # as hydra-optuna-sweeper: no more batches, no results file
    assert (tmp_path / "sweep" / "1").is_dir() and not (tmp_path / "sweep" / "2").exists()
    assert not (tmp_path / "sweep" / "optimization_results.yaml").exists()


def test_a_dict_without_objectives_fails_naming_the_setting(app, tmp_path):
    result = app("returns=dict", "hydra.sweeper.max_failure_rate=1.0", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "set hydra.sweeper.objectives" in result.stdout
    assert _results(tmp_path)["trials"] == {"fail": 2}


@pytest.mark.parametrize("returns", ["dict", "result"])
def test_objectives_constraints_and_resume_to_total(app, tmp_path, returns):
    common = [f"returns={returns}", "hydra.sweeper.storage=sqlite:///optuna.db",
              "hydra.sweeper.study_name=s", "hydra.sweeper.resume_to_total=true",
              "hydra.sweeper.max_failures=3", "hydra.sweeper.max_failure_rate=1.0",
              "hydra.sweeper.n_jobs=1",
              "hydra.sweeper.direction=[minimize,maximize]",
              "hydra.sweeper.objectives=[final/loss,s/size]",
              "+hydra.sweeper.constraints=[{metric: final/size, max: 15}]"]
    first = app(*common, "hydra.sweeper.n_trials=2", "raise_on=[0]",
                "hydra.sweeper.trial_node=trial")
    assert first.returncode == 0, first.stderr[-3000:]
    again = app(*common, "hydra.sweeper.n_trials=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2/3 trials finished, resuming" in again.stdout
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        size = 10 * trial.params["x"]
        assert trial.values[1] == size and trial.constraints == {"final/size": size - 15}
        assert trial.user_attrs["feasible"] is (size <= 15)
    results = _results(tmp_path)
    assert results["objectives"] == ["final/loss", "s/size"]
    for solution in results["solutions"]:
        assert solution["values"] == study.trials[solution["number"]].values
        assert solution["user_attrs"]["feasible"] is True


def test_the_trial_node_lets_a_job_prune_itself(app, tmp_path):
    result = app("hydra.sweeper.trial_node=trial", "hydra.sweeper.storage=sqlite:///optuna.db",
                 "prune_on=[1]", "hydra/sweeper/pruner=median", "hydra.sweeper.n_jobs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    overrides = yaml.safe_load((tmp_path / "sweep" / "2" / ".hydra" / "overrides.yaml")
                               .read_text())
    assert "+trial.trial_number=2" in overrides and "+trial.study_name='sweep'" in overrides
    assert _results(tmp_path)["trials"] == {"complete": 3, "pruned": 1}
    assert "trial 1 PRUNED  at step 0" in result.stdout


def test_custom_search_space_callbacks_validator_and_plots(app, tmp_path):
    result = app("hydra.sweeper.custom_search_space=app.configure",
                 "+hydra.sweeper.callbacks=[app.Hooks]", "hydra.sweeper.validator=app.validate",
                 "x=range(0, 5)", "hydra.sweeper.max_failure_rate=1.0",
                 "hydra.sweeper.plots=true")
    # the validator refuses x=5 (range(0, 5) includes 5) at the probe, before any trial
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "app: error: x: must be <= 3, got 5 [in search space point: x=5]")
    result = app("hydra.sweeper.custom_search_space=app.configure",
                 "+hydra.sweeper.callbacks=[app.Hooks]", "hydra.sweeper.validator=app.validate",
                 "hydra.sweeper.plots=true")
    assert result.returncode == 0, result.stderr[-3000:]
    results = _results(tmp_path)
    assert set(results["best_params"]) == {"x", "+w"}
    assert 0 <= results["best_params"]["+w"] <= 1
    hooks = (tmp_path / "hooks.txt").read_text().splitlines()
    assert hooks[0] == "start sweep" and hooks[1].startswith("end optuna [")
    assert "trials.csv" in hooks[1] and "optimization_results.yaml" in hooks[1]
    if importlib.util.find_spec("matplotlib"):  # the plots extra
        assert "optimization_history.png" in hooks[1]
    else:
        assert "no plots" in result.stdout


def test_the_grid_sampler_runs_each_point_once(app, tmp_path):
    result = app("hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=10",
                 "+y=choice(a,b)")
    assert result.returncode == 0, result.stderr[-3000:]
    results = _results(tmp_path)
    assert results["n_trials"] == 6 and results["trials"] == {"complete": 6}


@pytest.mark.parametrize(("overrides", "line"), [
    (["hydra.sweeper.n_trials=0"], "app: error: hydra.sweeper.n_trials: must be an int >= 1"),
    (["hydra.sweeper.app_name=sphere", "hydra.sweeper.direction=up"],
     "sphere: error: hydra.sweeper.direction:"),
    (["hydra/sweeper/sampler=motpe"], "app: error: hydra.sweeper.sampler: Optuna rejects the "
                                      "sampler: ValueError: The 'motpe' sampler was removed"),
    (["hydra/sweeper/sampler=grid", "x=interval(0, 1)"], "app: error: x: the grid sampler"),
])
def test_bad_settings_fail_with_one_line_before_any_trial(app, tmp_path, overrides, line):
    result = app(*overrides)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr
    assert not (tmp_path / "sweep" / "0").exists()


def test_the_package_imports_nothing_heavy():
    code = ("import sys, hydra_plugins.hydra_optuna5_sweeper; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'tinyexp', 'mlflow', 'matplotlib', 'optuna'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_workers_sharing_a_study_reach_n_trials_exactly_and_draw_different_points(app, tmp_path):
    # Two processes on one SQLite study, as two workers: they count and ask trials under the
    # study's lock (exactly n_trials, however their batches interleave), and the second reseeds
    # its sampler on seeing the first's trials (else both would draw the same points).
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["hydra.sweeper.study_name=shared", f"hydra.sweeper.storage={storage}",
              "hydra.sweeper.resume_to_total=true", "hydra.sweeper.n_trials=8",
              "hydra.sweeper.n_jobs=1", "x=interval(0, 10)", "+sleep=0.3"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    workers = [subprocess.Popen([sys.executable, "app.py", "-m", *common,
                                 f"hydra.sweep.dir=sweep_{name}"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in "ab"]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    ran = [{int(p.name) for p in (tmp_path / f"sweep_{n}").iterdir() if p.name.isdigit()}
           for n in "ab"]
    assert all(ran) and not ran[0] & ran[1] and ran[0] | ran[1] == set(range(8)), ran
    assert len({t.params["x"] for t in trials}) == 8
