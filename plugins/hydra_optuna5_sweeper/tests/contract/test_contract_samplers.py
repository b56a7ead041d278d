"""Contract tests, part 1: the sphere example, the samplers and the sweeper's config node.

Upstream = facebookresearch/hydra plugins/hydra_optuna_sweeper at 2c03d1b9 (Optuna 4 port):
example/*, tests/test_optuna_sweeper_plugin.py, hydra_plugins/hydra_optuna_sweeper/{_impl,config}.py
and website/docs/plugins/optuna_sweeper.md. Each test runs a real Hydra app as a subprocess
(fixtures in conftest.py).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

SPHERE_Y = {-5, 0, 5}


def on_grid(v: float, low: float, high: float, step: float, tol: float = 1e-9) -> bool:
    """v is low + k*step within [low, high] (stop included), up to float rounding (GPSampler
    returns e.g. 1.0000000000000009 for a step-0.5 FloatDistribution)."""
    k = round((v - low) / step)
    return abs(v - (low + k * step)) <= tol and low - tol <= v <= high + tol

SAMPLER_CLASSES = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "nsgaii": "NSGAIISampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "grid": "GridSampler",
}

# Upstream config.py: every sampler node with its defaults.
UPSTREAM_SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpe": {
        "_target_": "optuna.samplers.TPESampler", "seed": None, "consider_prior": None,
        "prior_weight": None, "consider_magic_clip": None, "consider_endpoints": None,
        "n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": False,
        "warn_independent_sampling": None,
    },
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {
        "_target_": "optuna.samplers.CmaEsSampler", "seed": None, "x0": None, "sigma0": None,
        "independent_sampler": None, "warn_independent_sampling": True,
        "consider_pruned_trials": False, "restart_strategy": None, "inc_popsize": 2,
        "use_separable_cma": False, "source_trials": None,
    },
    "nsgaii": {
        "_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50,
        "mutation_prob": None, "crossover_prob": 0.9, "swapping_prob": 0.5,
        "constraints_func": None,
    },
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True},
    "gp": {
        "_target_": "optuna.samplers.GPSampler", "seed": None, "independent_sampler": None,
        "n_startup_trials": 10, "deterministic_objective": False, "constraints_func": None,
        "warn_independent_sampling": True,
    },
    "qmc": {
        "_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol",
        "scramble": False, "independent_sampler": None, "warn_asynchronous_seeding": True,
        "warn_independent_sampling": True,
    },
}

UPSTREAM_SWEEPER_DEFAULTS = {
    "direction": "minimize", "storage": None, "study_name": None, "n_trials": 20, "n_jobs": 2,
    "max_failure_rate": 0.0, "params": None, "custom_search_space": None,
}


def skip_without(has_module: Any, sampler: str) -> None:
    needs = {"cmaes": ("cmaes",), "gp": ("torch", "scipy"), "qmc": ("scipy",)}
    missing = [m for m in needs.get(sampler, ()) if not has_module(m)]
    if missing:
        pytest.skip(f"Optuna's {sampler} sampler needs {', '.join(missing)}, absent from the "
                    f"app's Python (make test-sweeper runs it with tinyexp's)")


def check_sphere_jobs(run: Any, n_trials: int) -> list[Any]:
    """Jobs 0..n-1 on upstream's range/choice grid; results = the best job (sphere = x²+y²)."""
    jobs = run.jobs()
    assert [j.idx for j in jobs] == list(range(n_trials)), run.describe()
    for j in jobs:
        x, y = j.config["x"], j.config["y"]
        assert isinstance(x, float) and on_grid(x, -5.5, 5.5, 0.5), \
            f"job {j.idx}: x={x!r} {j.overrides}"
        assert isinstance(y, int) and y in SPHERE_Y, f"job {j.idx}: y={y!r} {j.overrides}"
    res = run.results()
    assert res["name"] == "optuna"
    bp = res["best_params"]
    assert set(bp) == {"x", "y"}, bp
    assert isinstance(res["best_value"], float), res
    assert res["best_value"] == pytest.approx(bp["x"] ** 2 + bp["y"] ** 2, rel=1e-12, abs=1e-12)
    assert res["best_value"] == pytest.approx(
        min(j.config["x"] ** 2 + j.config["y"] ** 2 for j in jobs), rel=1e-12, abs=1e-12)
    assert any(j.config["x"] == bp["x"] and j.config["y"] == bp["y"] for j in jobs), bp
    return jobs


def test_apps_are_verbatim() -> None:
    """apps/ holds byte-identical copies of upstream's examples (digests in SOURCES.md)."""
    apps = Path(__file__).resolve().parent / "apps"
    rows = re.findall(r"^\| (\S+) \| (\S+) \| ([0-9a-f]{64}) \|$",
                      (apps / "SOURCES.md").read_text(), re.M)
    assert len(rows) == 8
    for name, _, digest in rows:
        assert hashlib.sha256((apps / name).read_bytes()).hexdigest() == digest, name


def test_sphere_tpe_unchanged(run_app: Any) -> None:
    """`python example/sphere.py --multirun`: 20 trials, TPE, results file as documented."""
    run = run_app("sphere.py")
    run.assert_ok()
    assert "Sampler: TPESampler" in run.output
    check_sphere_jobs(run, 20)


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "nsgaii", "gp", "qmc"])
def test_sphere_each_sampler(run_app: Any, has_module: Any, sampler: str) -> None:
    skip_without(has_module, sampler)
    extra = ["hydra.sweeper.sampler.n_startup_trials=2"] if sampler == "gp" else []
    run = run_app("sphere.py", f"hydra/sweeper/sampler={sampler}",
                  "hydra.sweeper.sampler.seed=123", "hydra.sweeper.n_trials=6", *extra)
    run.assert_ok()
    assert f"Sampler: {SAMPLER_CLASSES[sampler]}" in run.output, run.describe()
    check_sphere_jobs(run, 6)


@pytest.mark.parametrize("n_trials, expected", [(20, 8), (3, 3)])
def test_grid_sampler_caps_n_trials(run_app: Any, apps: Path, n_trials: int,
                                    expected: int) -> None:
    """Upstream's tests/conf/test_grid.yaml: grid = choice(-1,1) x range(-1.0,1.0,step=1)
    x choice(foo,bar). Upstream's grid takes (high-low)//step points of a range (stop
    excluded): 2*2*2 = 8 points; n_trials is capped at 8 and every point runs once."""
    run = run_app("sphere.py", f"hydra.sweeper.n_trials={n_trials}",
                  pre_args=["--config-dir", str(apps / "upstream-tests-conf"),
                            "--config-name", "test_grid"])
    run.assert_ok()
    assert "Sampler: GridSampler" in run.output
    jobs = run.jobs()
    assert [j.idx for j in jobs] == list(range(expected)), run.describe()
    points = [(j.config["x"], j.config["y"], j.config["z"]) for j in jobs]
    grid = set(itertools.product([-1, 1], [-1.0, 0.0], ["foo", "bar"]))
    assert len(set(points)) == len(points), points
    assert set(points) <= grid, points
    if expected == len(grid):
        assert set(points) == grid
    for j in jobs:
        assert isinstance(j.config["x"], int) and isinstance(j.config["y"], float), j.config
    res = run.results()
    assert res["name"] == "optuna" and set(res["best_params"]) == {"x", "y", "z"}
    bp = res["best_params"]
    assert res["best_value"] == pytest.approx(bp["x"] ** 2 + bp["y"] ** 2)
    if expected == len(grid):
        assert res["best_value"] == 1 and abs(bp["x"]) == 1 and bp["y"] == 0


def test_motpe_removed(run_app: Any, apps: Path) -> None:
    """Upstream's test_example_with_removed_motpe (tests/conf/test_motpe.yaml)."""
    run = run_app("multi-objective.py", "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1",
                  pre_args=["--config-dir", str(apps / "upstream-tests-conf"),
                            "--config-name", "test_motpe"])
    run.assert_failed()
    assert "motpe" in run.stderr, run.describe()
    assert "sampler was removed in Optuna 4.0" in run.stderr, run.describe()
    assert run.job_dirs() == []


@pytest.mark.parametrize("sampler, fields, n_trials", [
    ("tpe", ["multivariate=true", "n_ei_candidates=12", "consider_endpoints=true",
             "prior_weight=1.0", "warn_independent_sampling=false", "consider_magic_clip=true",
             "consider_prior=true", "n_startup_trials=3", "seed=123"], 6),
    ("random", ["seed=7"], 3),
    ("nsgaii", ["population_size=4", "mutation_prob=0.5", "crossover_prob=0.8",
                "swapping_prob=0.4", "seed=123"], 8),
    ("cmaes", ["sigma0=1.0", "inc_popsize=3", "use_separable_cma=true",
               "consider_pruned_trials=false", "warn_independent_sampling=false", "seed=123"], 5),
    ("gp", ["n_startup_trials=2", "deterministic_objective=true",
            "warn_independent_sampling=false", "seed=123"], 4),
    ("qmc", ["qmc_type=halton", "scramble=true", "warn_asynchronous_seeding=false",
             "warn_independent_sampling=false", "seed=123"], 4),
])
def test_sampler_fields_accepted(run_app: Any, has_module: Any, sampler: str,
                                 fields: list[str], n_trials: int) -> None:
    """Fields of upstream's sampler dataclasses are accepted on the command line."""
    skip_without(has_module, sampler)
    run = run_app("sphere.py", f"hydra/sweeper/sampler={sampler}",
                  f"hydra.sweeper.n_trials={n_trials}",
                  *[f"hydra.sweeper.sampler.{f}" for f in fields])
    run.assert_ok()
    assert f"Sampler: {SAMPLER_CLASSES[sampler]}" in run.output, run.describe()
    check_sphere_jobs(run, n_trials)


def test_seed_reproducible(run_app: Any) -> None:
    """hydra.sweeper.sampler.seed reaches the sampler: same seed, same trials."""
    args = ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=5"]
    a = run_app("sphere.py", *args, "hydra.sweeper.sampler.seed=123")
    b = run_app("sphere.py", *args, "hydra.sweeper.sampler.seed=123")
    c = run_app("sphere.py", *args, "hydra.sweeper.sampler.seed=124")
    for r in (a, b, c):
        r.assert_ok()
    assert [j.overrides for j in a.jobs()] == [j.overrides for j in b.jobs()]
    assert [j.overrides for j in a.jobs()] != [j.overrides for j in c.jobs()]


def test_cfg_hydra_sweeper_defaults(run_app: Any) -> None:
    """`app.py --cfg hydra -p hydra.sweeper` with nothing but `override hydra/sweeper: optuna`
    prints upstream's keys and defaults (direction minimize, n_trials 20, n_jobs 2, TPE)."""
    node = run_app("own/minimal.py", "--cfg", "hydra", "-p", "hydra.sweeper",
                   multirun=False).hydra_node()
    expected_keys = {"sampler", *UPSTREAM_SWEEPER_DEFAULTS}
    assert expected_keys <= set(node), f"missing keys: {expected_keys - set(node)}"
    assert str(node.get("_target_", "")).endswith("OptunaSweeper"), node.get("_target_")
    got = {k: node[k] for k in UPSTREAM_SWEEPER_DEFAULTS}
    assert got == UPSTREAM_SWEEPER_DEFAULTS
    sampler = node["sampler"]
    assert {k: sampler.get(k, "<absent>") for k in UPSTREAM_SAMPLER_DEFAULTS["tpe"]} \
        == UPSTREAM_SAMPLER_DEFAULTS["tpe"]


def test_cfg_sphere_sweeper_node(run_app: Any) -> None:
    """The documented `python example/sphere.py hydra/sweeper=optuna --cfg hydra -p
    hydra.sweeper` shows the example's settings."""
    node = run_app("sphere.py", "--cfg", "hydra", "-p", "hydra.sweeper",
                   multirun=False).hydra_node()
    assert node["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert node["sampler"]["seed"] == 123
    assert {k: node[k] for k in ("direction", "storage", "study_name", "n_trials", "n_jobs",
                                 "max_failure_rate")} == {
        "direction": "minimize", "storage": None, "study_name": "sphere", "n_trials": 20,
        "n_jobs": 1, "max_failure_rate": 0.0}
    assert node["params"] == {"x": "range(-5.5, 5.5, step=0.5)", "y": "choice(-5 ,0 ,5)"}


@pytest.mark.parametrize("sampler", sorted(UPSTREAM_SAMPLER_DEFAULTS))
def test_cfg_sampler_group(run_app: Any, sampler: str) -> None:
    """hydra/sweeper/sampler=<name> selects upstream's sampler node: same _target_, fields and
    defaults (catches another plugin's configs shadowing this group)."""
    node = run_app("own/minimal.py", f"hydra/sweeper/sampler={sampler}", "--cfg", "hydra",
                   "-p", "hydra.sweeper.sampler", multirun=False).hydra_node()
    expected = UPSTREAM_SAMPLER_DEFAULTS[sampler]
    assert {k: node.get(k, "<absent>") for k in expected} == expected, node


@pytest.mark.parametrize("sampler", sorted(UPSTREAM_SAMPLER_DEFAULTS))
def test_cfg_sampler_extra_fields_keep_optuna_defaults(run_app: Any, sampler: str) -> None:
    """A field the plugin adds beyond upstream's (e.g. TPE's constant_liar) must hold Optuna's
    own default: the default sampler must behave as upstream's, which leaves it unset."""
    import inspect

    import optuna

    node = run_app("own/minimal.py", f"hydra/sweeper/sampler={sampler}", "--cfg", "hydra",
                   "-p", "hydra.sweeper.sampler", multirun=False).hydra_node()
    cls = getattr(optuna.samplers, node["_target_"].rsplit(".", 1)[-1])
    params = inspect.signature(cls).parameters
    extras = {k: v for k, v in node.items()
              if k not in UPSTREAM_SAMPLER_DEFAULTS[sampler] and not k.startswith("_")}
    changed = {k: (v, params[k].default if k in params else "<not a parameter>")
               for k, v in extras.items() if k not in params or v != params[k].default}
    assert changed == {}, f"extra fields unlike Optuna's defaults (value, default): {changed}"
