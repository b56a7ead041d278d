"""The sweeper's config schema: the dataclass configs of the sweeper, its samplers and its
pruners, and their registration in Hydra's ConfigStore (``hydra/sweeper: tinyexp_optuna``,
``hydra/sweeper/sampler``, ``hydra/sweeper/pruner``).

Imported by ``optuna_sweeper``, so the registrations happen whenever the sweeper is loaded.
The settings are typed ``Any``: a search preset sets them through interpolations
(``n_trials: ${search.n_trials}``), and a typed field would make a bad value fail inside Hydra's
instantiate with a traceback. The sweeper checks each one itself (``_settings``) and names the
key the user typed.
Hydra loads plugin modules outside sys.modules: no ``from __future__ import annotations`` here,
and only typing's ``Optional``/``List`` in the dataclasses.
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass, field
from typing import Any, List

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ----------------------------------------------------------------------------- config schema


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Any = "${oc.select:seed,null}"  # the experiment's seed
    n_startup_trials: Any = 10  # random trials before TPE models the results
    constant_liar: Any = True  # trials of one batch avoid each other's points


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Any = "${oc.select:seed,null}"
    population_size: Any = 50
    mutation_prob: Any = None
    crossover_prob: Any = 0.9
    swapping_prob: Any = 0.5


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Any = "${oc.select:seed,null}"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: Any = 5  # never prune before this many trials finished
    n_warmup_steps: Any = 2  # nor before a trial reported this many fine-tuning epochs
    interval_steps: Any = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: Any = 1
    max_resource: Any = "auto"
    reduction_factor: Any = 3


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class TinyexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.tinyexp_optuna.optuna_sweeper.TinyexpOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    # The sampler and pruner reach the sweeper as configs: it seeds the sampler itself (see
    # `_sampler`) and stores the pruner's config in the study for the jobs.
    _recursive_: bool = False

    # `_target_` nodes (hydra/sweeper/sampler: tpe, nsgaii, random; hydra/sweeper/pruner:
    # median, hyperband, nop; pruner null = no pruning).
    sampler: Any = MISSING
    pruner: Any = MISSING
    # "minimize" / "maximize", or a list of them: one per objective.
    direction: Any = "maximize"
    # What each direction optimizes: "final/<metric>" (the job's last stage), "<stage>/<metric>",
    # or "objective" (the job's own objective).
    objectives: Any = field(default_factory=lambda: ["final/f1"])
    # [{metric: final/flash_bytes, max: 131072}, ...]: feasible when value <= max (or >= min).
    constraints: Any = field(default_factory=list)
    # null: the sweep folder's name.
    study_name: Any = None
    # null: sqlite:///<sweep dir>/optuna.db. An SQLAlchemy URL, or the path of an Optuna journal
    # file (a journal has no heartbeats). SQLite on a network filesystem locks or corrupts:
    # there, use a database server.
    storage: Any = None
    # Target number of finished (COMPLETE or PRUNED) trials in the study, counting earlier runs.
    n_trials: Any = 20
    # Trials asked together and launched as one batch through Hydra's launcher.
    n_jobs: Any = 1
    # Stop after this many failed trials in a row (a broken setup must not loop forever).
    max_failures: Any = 10
    # key -> Hydra sweep syntax: interval(0.1, 0.9), int(interval(2, 8)), range(2, 9),
    # choice(a, b), tag(log, interval(1e-4, 1e-1)); plain values are fixed overrides.
    params: Any = None
    # More params by the option chosen in a config group, {group: {option: {key: sweep}}}, e.g.
    # {arch: {cnn: {arch.channels: "choice([32,16],[16,8])"}, lstm: {arch.hidden_size: ...}}}:
    # the architecture's width where it has one.
    group_params: Any = None
    # Seconds between heartbeats of RUNNING trials; a trial without one for `grace_period`
    # seconds belongs to a dead process and is failed when a sweep (re)starts. Keep the grace
    # period above the longest stall of the sweeper process (null: no heartbeats).
    heartbeat_interval: Any = 60
    grace_period: Any = 120
    # Called with every job's composed config before it is launched; raises on a bad config.
    validator: Any = "tinyexp.config.validate"
    # Save Optuna's plots (optimization history, importances, Pareto front) as PNG.
    plots: Any = True


# Hydra loads this module outside sys.modules: no `from __future__ import annotations` above.
_cs = ConfigStore.instance()
_cs.store(group="hydra/sweeper", name="tinyexp_optuna", node=TinyexpOptunaSweeperConf,
          provider="tinyexp")
for _name, _node in (("tpe", TPESamplerConf), ("nsgaii", NSGAIISamplerConf),
                     ("random", RandomSamplerConf)):
    _cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="tinyexp")
for _name, _node in (("median", MedianPrunerConf), ("hyperband", HyperbandPrunerConf),
                     ("nop", NopPrunerConf)):
    _cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="tinyexp")
