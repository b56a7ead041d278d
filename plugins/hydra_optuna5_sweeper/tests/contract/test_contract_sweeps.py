"""Contract tests, part 2: search-space syntax, multi-objective, custom search space, storage,
failures and batches.

Upstream = facebookresearch/hydra plugins/hydra_optuna_sweeper at 2c03d1b9 (see
test_contract_samplers.py). Each test runs a real Hydra app as a subprocess (conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEED = "hydra.sweeper.sampler.seed=123"
TOL = 1e-9
FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def on_grid(v: float, low: float, high: float, step: float) -> bool:
    k = round((v - low) / step)
    return abs(v - (low + k * step)) <= TOL and low - TOL <= v <= high + TOL


def check_best_is_sphere(run: Any) -> dict[str, Any]:
    res = run.results()
    assert res["name"] == "optuna"
    bp = res["best_params"]
    assert res["best_value"] == pytest.approx(bp["x"] ** 2 + bp["y"] ** 2, rel=1e-12, abs=1e-12)
    return res


def test_float_range_reaches_stop(run_app: Any) -> None:
    """Upstream maps range(start, stop, step) to FloatDistribution(start, stop, step): the stop
    value is a possible sample (unlike Hydra's basic sweeper)."""
    run = run_app("sphere.py", "x=range(4.5, 5.5, step=0.5)", "y=choice(0)",
                  "hydra/sweeper/sampler=random", SEED, "hydra.sweeper.n_trials=12")
    run.assert_ok()
    xs = [j.config["x"] for j in run.jobs()]
    assert len(xs) == 12
    assert set(xs) <= {4.5, 5.0, 5.5}, xs
    assert 5.5 in xs, xs
    assert all(j.config["y"] == 0 for j in run.jobs())


# (overrides, check of x, check of y): the docs' command-line search-space examples.
Check = Callable[[Any], bool]
SPACE_CASES: dict[str, tuple[list[str], Check, Check]] = {
    "interval": (["x=interval(-5.0, 5.0)", "y=interval(0, 10)"],
                 lambda x: isinstance(x, float) and -5 <= x <= 5,
                 lambda y: isinstance(y, float) and 0 <= y <= 10),
    "int_interval": (["x=int(interval(-5.0, 5.0))"],
                     lambda x: is_int(x) and -5 <= x <= 5,
                     lambda y: is_int(y) and y in {-5, 0, 5}),
    "log_interval": (["y=tag(log, interval(1, 10))"],
                     lambda x: isinstance(x, float) and on_grid(x, -5.5, 5.5, 0.5),
                     lambda y: isinstance(y, float) and 1 <= y <= 10),
    "docs_int_and_log": (["x=int(interval(-5.0, 5.0))", "y=tag(log, interval(1, 10))"],
                         lambda x: is_int(x) and -5 <= x <= 5,
                         lambda y: isinstance(y, float) and 1 <= y <= 10),
    "log_int_interval": (["y=tag(log, int(interval(1, 16)))"],
                         lambda x: isinstance(x, float) and on_grid(x, -5.5, 5.5, 0.5),
                         lambda y: is_int(y) and 1 <= y <= 16),
    "range_shuffle": (["x=range(-5.0, 5.0)", "y=shuffle(range(-5, 5))"],
                      lambda x: isinstance(x, float) and on_grid(x, -5.0, 5.0, 1.0),
                      lambda y: is_int(y) and y in range(-5, 5)),
    "int_range": (["x=range(-5, 5)"],
                  lambda x: is_int(x) and -5 <= x <= 5,
                  lambda y: is_int(y) and y in {-5, 0, 5}),
    "choice": (["x=choice(-5.0, 0.0, 5.0)", "y=choice(0, 1, 2, 3, 4, 5)"],
               lambda x: isinstance(x, float) and x in {-5.0, 0.0, 5.0},
               lambda y: is_int(y) and y in range(6)),
}


@pytest.mark.parametrize("case", sorted(SPACE_CASES))
def test_command_line_search_space(run_app: Any, case: str) -> None:
    overrides, x_ok, y_ok = SPACE_CASES[case]
    run = run_app("sphere.py", *overrides, SEED, "hydra.sweeper.n_trials=8")
    run.assert_ok()
    jobs = run.jobs()
    assert [j.idx for j in jobs] == list(range(8)), run.describe()
    for j in jobs:
        assert x_ok(j.config["x"]), f"job {j.idx}: x={j.config['x']!r} ({j.overrides})"
        assert y_ok(j.config["y"]), f"job {j.idx}: y={j.config['y']!r} ({j.overrides})"
    check_best_is_sphere(run)


def test_fixed_and_delete_overrides(run_app: Any, tmp_path: Path) -> None:
    """Upstream's test_optuna_example(with_commandline=True): `y=0` is a fixed parameter (not
    in best_params, nor in the study's params), `~z` deletes z from every job's config."""
    storage = f"sqlite:///{tmp_path / 'fixed.db'}"
    run = run_app("sphere.py", "x=choice(0, 1, 2)", "y=0", "~z", SEED,
                  "hydra.sweeper.n_trials=6", f"hydra.sweeper.storage={storage}",
                  "hydra.sweeper.study_name=fixed")
    run.assert_ok()
    for j in run.jobs():
        assert j.config["y"] == 0 and j.config["x"] in {0, 1, 2}, j.config
        assert "z" not in j.config, j.config
    res = run.results()
    assert "y" not in res["best_params"]
    study = optuna.load_study(study_name="fixed", storage=storage)
    assert "y" not in study.best_trial.params
    assert res["best_params"]["x"] == study.best_trial.params["x"]
    assert res["best_value"] == study.best_value == res["best_params"]["x"] ** 2


def binh_korn(x: float, y: float) -> list[float]:
    return [4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2]


def dominates(a: list[float], b: list[float]) -> bool:
    return all(p <= q for p, q in zip(a, b, strict=True)) and any(
        p < q for p, q in zip(a, b, strict=True))


def test_multi_objective(run_app: Any) -> None:
    """example/multi-objective.py unchanged (NSGA-II, 20 trials): the Pareto front of the jobs."""
    run = run_app("multi-objective.py")
    run.assert_ok()
    res = run.results()
    assert res["name"] == "optuna" and "best_params" not in res
    solutions = res["solutions"]
    assert isinstance(solutions, list) and solutions
    for s in solutions:
        # upstream writes exactly {params, values}; extra keys are tolerated (readers of
        # upstream's file only look these two up)
        assert {"params", "values"} <= set(s), s
        assert set(s["params"]) == {"x", "y"}, s
        assert isinstance(s["values"], list) and len(s["values"]) == 2, s
        assert all(isinstance(v, float) for v in s["values"]), s
        assert s["values"] == pytest.approx(binh_korn(s["params"]["x"], s["params"]["y"]))
        assert on_grid(s["params"]["x"], 0, 5, 0.5) and on_grid(s["params"]["y"], 0, 3, 0.5), s
    for a in solutions:
        for b in solutions:
            assert not dominates(a["values"], b["values"]), (a, b)
    jobs = run.jobs()
    assert [j.idx for j in jobs] == list(range(20))
    points = {(j.config["x"], j.config["y"]) for j in jobs}
    front = {p for p in points if not any(dominates(binh_korn(*q), binh_korn(*p)) for q in points)}
    assert {(s["params"]["x"], s["params"]["y"]) for s in solutions} == front


def test_custom_search_space(run_app: Any) -> None:
    """example/custom-search-space-objective.py: configure() adds z (|z-x| <= 0.5) and +w."""
    run = run_app("custom-search-space-objective.py", SEED, "hydra.sweeper.n_trials=10")
    run.assert_ok()
    jobs = run.jobs()
    assert [j.idx for j in jobs] == list(range(10)), run.describe()
    for j in jobs:
        c = j.config
        assert abs(c["z"] - c["x"]) <= 0.5 + TOL, c
        assert 0.0 <= c["w"] <= 1.0, c
        assert on_grid(c["x"], -5.5, 5.5, 0.5) and c["y"] in {-5, 0, 5}, c
    res = run.results()
    assert res["name"] == "optuna"
    bp = res["best_params"]
    assert set(bp) == {"x", "y", "z", "+w"}, bp
    assert res["best_value"] == pytest.approx(
        bp["+w"] ** 2 + bp["x"] ** 2 + bp["y"] ** 2 + bp["z"] ** 2, rel=1e-12, abs=1e-12)


def test_custom_search_space_overlap_with_fixed_param(run_app: Any) -> None:
    """Documented: configure() may not suggest a parameter fixed on the command line (z=1)."""
    run = run_app("custom-search-space-objective.py", "z=1", SEED, "hydra.sweeper.n_trials=2")
    run.assert_failed()
    assert "Overlapping fixed parameters and search space parameters found" in run.stderr, \
        run.describe()


def test_direction_maximize(run_app: Any) -> None:
    run = run_app("sphere.py", "hydra.sweeper.direction=maximize", SEED,
                  "hydra.sweeper.n_trials=6")
    run.assert_ok()
    res = check_best_is_sphere(run)
    assert res["best_value"] == max(j.config["x"] ** 2 + j.config["y"] ** 2 for j in run.jobs())


def test_storage_and_resume(run_app: Any, tmp_path: Path) -> None:
    """Two runs on one sqlite study: n_trials new trials per run (4 + 4 COMPLETE)."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s",
            "hydra.sweeper.n_trials=4", SEED]
    first = run_app("sphere.py", *args, sweep_dir=tmp_path / "run1")
    first.assert_ok()
    second = run_app("sphere.py", *args, sweep_dir=tmp_path / "run2")
    second.assert_ok()
    assert [j.idx for j in second.jobs()] == [0, 1, 2, 3]
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 8, states
    res = check_best_is_sphere(second)
    assert res["best_value"] == study.best_value
    assert res["best_params"] == study.best_params


def test_in_memory_default(run_app: Any) -> None:
    """storage: null (the example's setting) keeps the study in memory: no database file."""
    run = run_app("sphere.py", "hydra.sweeper.n_trials=3")
    run.assert_ok()
    assert list(run.cwd.iterdir()) == [], "the sweep wrote into the working directory"
    db_like = [p for p in run.sweep_dir.rglob("*")
               if p.suffix in {".db", ".sqlite", ".sqlite3", ".journal"} or "journal" in p.name]
    assert db_like == []
    assert "Storage: None" in run.output


def test_error_fails_sweep(run_app: Any) -> None:
    """sphere error=true with max_failure_rate 0.0: the first failed batch stops the sweep with
    the job's RuntimeError; no results file."""
    run = run_app("sphere.py", "error=true", "hydra.sweeper.n_trials=3")
    run.assert_failed()
    assert "RuntimeError" in run.stderr and "cfg.error is True" in run.stderr, run.describe()
    assert not (run.sweep_dir / "optimization_results.yaml").exists()
    assert [p.name for p in run.job_dirs()] == ["0"]


def flaky_study(run_app: Any, tmp_path: Path, *overrides: str) -> tuple[Any, Any]:
    storage = f"sqlite:///{tmp_path / 'flaky.db'}"
    run = run_app("own/flaky.py", f"hydra.sweeper.storage={storage}",
                  "hydra.sweeper.study_name=flaky", *overrides)
    return run, storage


def check_failed_where_x_above_3(run: Any, storage: str, n_trials: int) -> None:
    run.assert_ok()
    study = optuna.load_study(study_name="flaky", storage=storage)
    trials = study.trials
    assert len(trials) == n_trials
    for t in trials:
        want = FAIL if t.params["x"] > 3 else COMPLETE
        assert t.state == want, (t.number, t.params, t.state)
    assert {t.state for t in trials} == {optuna.trial.TrialState.FAIL,
                                         optuna.trial.TrialState.COMPLETE}, "seed gives no mix"
    res = run.results()
    assert res["best_value"] == study.best_value == min(
        t.params["x"] ** 2 + t.params["y"] ** 2 for t in trials if t.params["x"] <= 3)
    assert [j.idx for j in run.jobs()] == list(range(n_trials))


def test_max_failure_rate_tolerates_failures(run_app: Any, tmp_path: Path) -> None:
    """Trials raising in the job are FAIL in the study; with max_failure_rate=1.0 the sweep
    goes on and exits 0."""
    run, storage = flaky_study(run_app, tmp_path, "hydra.sweeper.max_failure_rate=1.0")
    check_failed_where_x_above_3(run, storage, 10)
    assert "flaky: x=" in run.output


def test_max_failure_rate_zero_stops_at_first_failure(run_app: Any, tmp_path: Path) -> None:
    """Default max_failure_rate 0.0: the first batch with a failed trial ends the sweep with the
    job's exception. (Seed 10 makes trial 3 the first with x > 3 when x is suggested before y,
    as upstream does; the assertions hold for any order.)"""
    run, storage = flaky_study(run_app, tmp_path, "hydra.sweeper.sampler.seed=10")
    run.assert_failed()
    assert "ValueError" in run.stderr and "flaky: x=" in run.stderr, run.describe()
    study = optuna.load_study(study_name="flaky", storage=storage)
    states = [t.state for t in study.trials]
    assert states[-1] == optuna.trial.TrialState.FAIL
    assert states[:-1] == [optuna.trial.TrialState.COMPLETE] * (len(states) - 1)
    assert len(run.job_dirs()) == len(states) < 10


def test_non_float_return_fails_trial(run_app: Any, tmp_path: Path) -> None:
    """A job returning a string fails its trial with upstream's message."""
    run, storage = flaky_study(run_app, tmp_path, "fail_mode=string",
                               "hydra.sweeper.max_failure_rate=1.0")
    check_failed_where_x_above_3(run, storage, 10)
    assert "Return value must be float-castable. Got 'not-a-number'." in run.output, \
        run.describe()


@pytest.mark.parametrize("n_trials, batches", [(4, [2, 2]), (5, [2, 2, 1])])
def test_n_jobs_batches(run_app: Any, n_trials: int, batches: list[int]) -> None:
    """n_jobs trials are asked and launched together; the last batch holds the rest."""
    run = run_app("sphere.py", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=2",
                  SEED)
    run.assert_ok()
    assert [j.idx for j in run.jobs()] == list(range(n_trials))
    launched = [int(n) for n in re.findall(r"Launching (\d+) jobs locally", run.output)]
    assert launched == batches, run.describe()
    check_best_is_sphere(run)
