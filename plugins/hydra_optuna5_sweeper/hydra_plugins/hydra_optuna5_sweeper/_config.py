"""The config schema: the sweeper's node, its samplers and pruners, and their registration in
Hydra's ConfigStore (``hydra/sweeper: optuna5``, and ``optuna`` when hydra-optuna-sweeper is
not installed; ``hydra/sweeper/sampler``; ``hydra/sweeper/pruner``).

The samplers have exactly the fields and defaults of hydra-optuna-sweeper's ``config.py`` (plus
``seed`` where it lacked one, and TPE's ``constant_liar``). The settings are typed ``Any``: a
value that comes through an interpolation (``n_trials: ${search.n_trials}``) reaches the
sweeper's own checks (``_checks``), which name the key the user typed, instead of failing
inside Hydra's instantiate with a traceback.
Hydra loads plugin modules outside sys.modules: no ``from __future__ import annotations`` here,
and only typing's ``Optional``/``List`` in the dataclasses.
"""
# ruff: noqa: UP006, UP035, UP045

import importlib.util
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, NoReturn

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def raise_motpe_removed(*args: Any, **kwargs: Any) -> NoReturn:
    raise ValueError(
        "The 'motpe' sampler was removed in Optuna 4.0. "
        "Use 'hydra/sweeper/sampler=tpe' instead. "
        "TPESampler now handles multi-objective optimization."
    )


class Direction(Enum):
    minimize = 1
    maximize = 2


# ----------------------------------------------------------------------------- samplers


@dataclass
class SamplerConfig:
    _target_: str = MISSING


@dataclass
class GridSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.GridSampler"
    # the search space is filled in at run time from the params (finite ones only)
    _partial_: bool = True
    seed: Any = None


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    seed: Any = None
    consider_prior: Any = None
    prior_weight: Any = None
    consider_magic_clip: Any = None
    consider_endpoints: Any = None
    n_startup_trials: Any = 10
    n_ei_candidates: Any = 24
    multivariate: Any = False
    warn_independent_sampling: Any = None
    # Optuna 5's default: the trials of one batch (n_jobs > 1) avoid each other's points.
    constant_liar: Any = True


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Any = None


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Any = None
    x0: Any = None
    sigma0: Any = None
    independent_sampler: Any = None
    warn_independent_sampling: Any = True
    consider_pruned_trials: Any = False
    restart_strategy: Any = None
    inc_popsize: Any = 2
    use_separable_cma: Any = False
    source_trials: Any = None


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Any = None
    population_size: Any = 50
    mutation_prob: Any = None
    crossover_prob: Any = 0.9
    swapping_prob: Any = 0.5
    constraints_func: Any = None


@dataclass
class MOTPESamplerConfig(SamplerConfig):
    _target_: str = "hydra_plugins.hydra_optuna5_sweeper._config.raise_motpe_removed"
    seed: Any = None


@dataclass
class GPSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.GPSampler"
    seed: Any = None
    independent_sampler: Any = None
    n_startup_trials: Any = 10
    deterministic_objective: Any = False
    constraints_func: Any = None
    warn_independent_sampling: Any = True


@dataclass
class QMCSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Any = None
    qmc_type: Any = "sobol"
    scramble: Any = False
    independent_sampler: Any = None
    warn_asynchronous_seeding: Any = True
    warn_independent_sampling: Any = True


# ----------------------------------------------------------------------------- pruners


@dataclass
class MedianPrunerConfig:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: Any = 5  # never prune before this many trials finished
    # nor before a trial reported this many steps: the first epochs of a training are noisy
    n_warmup_steps: Any = 2
    interval_steps: Any = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: Any = 1
    max_resource: Any = "auto"
    reduction_factor: Any = 3


@dataclass
class NopPrunerConfig:
    _target_: str = "optuna.pruners.NopPruner"


# ----------------------------------------------------------------------------- the sweeper


@dataclass
class OptunaSweeperConf:
    """hydra-optuna-sweeper's keys with its defaults, then ours (their defaults leave its
    behaviour unchanged). What each key means: ``SweeperSettings``."""

    _target_: str = "hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "nop"}])
    # The sampler and pruner reach the sweeper as configs: it seeds the sampler itself on a
    # resumed study and gives the grid sampler its search space.
    _recursive_: bool = False

    sampler: Any = MISSING
    direction: Any = Direction.minimize
    storage: Any = None
    study_name: Any = None
    n_trials: Any = 20
    n_jobs: Any = 2
    max_failure_rate: Any = 0.0
    params: Any = None
    custom_search_space: Any = None

    pruner: Any = MISSING
    objectives: Any = None
    constraints: Any = field(default_factory=list)
    group_params: Any = None
    validator: Any = None
    resume_to_total: Any = False
    max_failures: Any = None
    heartbeat_interval: Any = 60
    grace_period: Any = 120
    plots: Any = False
    trial_node: Any = None
    callbacks: Any = field(default_factory=list)
    mlflow: Any = None
    app_name: Any = None


SAMPLERS = {"tpe": TPESamplerConfig, "random": RandomSamplerConfig, "cmaes": CmaEsSamplerConfig,
            "nsgaii": NSGAIISamplerConfig, "motpe": MOTPESamplerConfig,
            "grid": GridSamplerConfig, "gp": GPSamplerConfig, "qmc": QMCSamplerConfig}
PRUNERS = {"median": MedianPrunerConfig, "hyperband": HyperbandPrunerConfig,
           "nop": NopPrunerConfig}

_cs = ConfigStore.instance()
_cs.store(group="hydra/sweeper", name="optuna5", node=OptunaSweeperConf,
          provider="hydra_optuna5_sweeper")
# The drop-in name, unless hydra-optuna-sweeper itself is installed (then it keeps its name).
if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
    _cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
              provider="hydra_optuna5_sweeper")
for _name, _node in SAMPLERS.items():
    _cs.store(group="hydra/sweeper/sampler", name=_name, node=_node,
              provider="hydra_optuna5_sweeper")
for _name, _node in PRUNERS.items():
    _cs.store(group="hydra/sweeper/pruner", name=_name, node=_node,
              provider="hydra_optuna5_sweeper")
