"""``hydra/sweeper: tinyexp_optuna``: hydra-optuna5-sweeper's node with tinyexp's defaults.

What differs from the package's defaults, and why:

- maximize ``final/f1`` of the job's ``JobResult`` (``tinyexp.pipeline.run`` returns one);
- TPE and the other samplers seeded with the experiment's ``seed``; the median pruner, which
  the jobs apply while fine-tuning (``tinyexp.search``, through the ``optuna`` trial node);
- the study in ``<sweep dir>/optuna.db``, so the same command resumes it, and ``n_trials``
  counts the study's finished trials (a rerun adds only the missing ones);
- one job at a time; a failed trial never stops the search, only 10 failures in a row do;
- every job's config checked by ``tinyexp.config.validate`` before it runs; plots saved;
- the study's MLflow parent run (``tinyexp.search_run.MlflowStudyRun``).

Hydra loads plugin modules outside sys.modules: no ``from __future__ import annotations``
here, and only typing's ``List`` in the dataclass.
"""
# ruff: noqa: UP006, UP035

from dataclasses import dataclass, field
from typing import Any, List

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna5_sweeper import OptunaSweeperConf


@dataclass
class TinyexpOptunaSweeperConf(OptunaSweeperConf):
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"},
                                                         {"pruner": "median"}])
    # Merged into whichever sampler is chosen (every one of them takes a seed).
    sampler: Any = field(default_factory=lambda: {"seed": "${oc.select:seed,null}"})
    direction: Any = "maximize"
    # SQLite on a network filesystem locks or corrupts: there, use a database server.
    storage: Any = "sqlite:///${hydra.sweep.dir}/optuna.db"
    n_jobs: Any = 1
    max_failure_rate: Any = 1.0
    objectives: Any = field(default_factory=lambda: ["final/f1"])
    validator: Any = "tinyexp.config.validate"
    resume_to_total: Any = True
    max_failures: Any = 10
    plots: Any = True
    trial_node: Any = "optuna"
    callbacks: Any = field(default_factory=lambda: [
        {"_target_": "tinyexp.search_run.MlflowStudyRun"}])
    app_name: Any = "tinyexp"


ConfigStore.instance().store(group="hydra/sweeper", name="tinyexp_optuna",
                             node=TinyexpOptunaSweeperConf, provider="tinyexp")
