"""``hydra/sweeper: tinyexp_optuna``: hydra-optuna5-sweeper's node with tinyexp's defaults, as
the search presets compose it (the package's own settings and search space are tested in
``plugins/hydra_optuna5_sweeper/tests``)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from support import compose


def _sweeper(*overrides: str) -> dict:
    cfg = compose(list(overrides), hydra=True)
    return OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)


def test_memory_budget_gets_tinyexps_defaults():
    node = _sweeper("search=memory_budget")
    assert node["_target_"] == \
        "hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper.OptunaSweeper"
    sampler, pruner = node["sampler"], node["pruner"]
    assert sampler["_target_"] == "optuna.samplers.TPESampler"
    assert sampler["seed"] == "${oc.select:seed,null}"
    assert sampler["n_startup_trials"] == 10 and sampler["constant_liar"] is True
    assert pruner == {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5,
                      "n_warmup_steps": 2, "interval_steps": 1}
    assert {k: node[k] for k in ("direction", "objectives", "storage", "n_jobs",
                                 "max_failure_rate", "max_failures", "resume_to_total",
                                 "validator", "plots", "trial_node", "app_name")} == {
        "direction": "maximize", "objectives": ["final/f1"],
        "storage": "sqlite:///${hydra.sweep.dir}/optuna.db", "n_jobs": 1,
        "max_failure_rate": 1.0, "max_failures": 10, "resume_to_total": True,
        "validator": "tinyexp.config.validate", "plots": True, "trial_node": "optuna",
        "app_name": "tinyexp"}
    assert node["callbacks"] == [{"_target_": "tinyexp.search_run.MlflowStudyRun"}]


@pytest.mark.parametrize("sampler", ["nsgaii", "random", "grid", "qmc"])
def test_every_sampler_takes_the_experiments_seed(sampler):
    node = _sweeper("search=memory_budget", f"hydra/sweeper/sampler={sampler}")
    assert node["sampler"]["seed"] == "${oc.select:seed,null}"


def test_pareto_uses_nsga_ii_without_pruning():
    node = _sweeper("search=pareto")
    assert node["sampler"]["_target_"] == "optuna.samplers.NSGAIISampler"
    assert node["sampler"]["population_size"] == 10
    assert node["pruner"] == {"_target_": "optuna.pruners.NopPruner"}
    assert node["direction"] == ["maximize", "minimize"]
