"""The sweeper's settings: ``SweeperSettings``, one field per key of the config node, and
``check()``, which checks them all before anything runs and works out what the loop uses
(directions, objective names, constraints, the functions the dotted paths name).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import importlib.util
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from omegaconf import OmegaConf

from hydra_plugins.hydra_optuna5_sweeper._checks import (
    _constraints,
    _directions,
    _is_number,
    _SettingsError,
    check_component,
    check_count,
    check_flag,
    check_heartbeat,
    check_objectives,
    check_storage,
    check_study_name,
)
from hydra_plugins.hydra_optuna5_sweeper._results import Constraint
from hydra_plugins.hydra_optuna5_sweeper._util import error_text

_NAME = re.compile(r"^[A-Za-z_]\w*$")


@dataclass
class SweeperSettings:
    """The keys of ``hydra.sweeper`` (``_config.OptunaSweeperConf``), as given.

    hydra-optuna-sweeper's keys, with its meaning:
        sampler: a sampler config (``hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|grid|gp|qmc``).
        direction: ``minimize``/``maximize`` or a list of them, one per objective.
        storage: null (in memory), an SQLAlchemy URL, or (ours) the path of a journal file.
        study_name: null: the sweep folder's name (hydra-optuna-sweeper: Optuna's random name).
        n_trials: trials to run now (with ``resume_to_total``: finished trials to reach).
        n_jobs: trials asked and launched together, as one batch.
        max_failure_rate: after a batch, stop (re-raising a failed job's error) when more than
            this share of it failed.
        params: ``key: sweep`` in Hydra's syntax; plain values are fixed overrides.
        custom_search_space: dotted path of ``fn(cfg, trial)``, called after ``params`` are
            suggested; what it suggests becomes overrides too.

    Ours:
        pruner: a pruner config (``hydra/sweeper/pruner=nop|median|hyperband``).
        objectives: null (the job returns its values), or what to read from a ``JobResult``:
            ``objective``, ``final/<metric>``, ``<stage>/<metric>``, one per direction.
        constraints: ``[{metric: ..., max: ...}|{metric: ..., min: ...}]``; feasible when met.
        group_params: ``{group: {option: {key: sweep}}}``: params by the option a group chose.
        validator: dotted path of ``fn(job_cfg)``, called on every job's config before launch.
        resume_to_total: n_trials counts the study's finished trials (a rerun adds the rest).
        max_failures: stop after this many failed trials in a row (null: never).
        heartbeat_interval, grace_period: seconds; RUNNING trials of a dead process are failed
            (RDB storages only).
        plots: save Optuna's plots as PNG (needs matplotlib).
        trial_node: a config key that gets ``study_name``, ``storage``, ``trial_id``,
            ``trial_number`` in every job (for pruning from inside the job).
        callbacks: ``_target_`` nodes or dotted paths of objects with ``on_study_start(sweeper,
            study)`` and/or ``on_study_end(sweeper, study, results, files)``.
        mlflow: null, or ``{tracking_uri, experiment_name, run_name}``: log a run of the study.
        app_name: error lines start ``<app_name>: error:`` (null: ``hydra.job.name``).
    """

    sampler: Any = None
    direction: Any = "minimize"
    storage: Any = None
    study_name: Any = None
    n_trials: Any = 20
    n_jobs: Any = 2
    max_failure_rate: Any = 0.0
    params: Any = None
    custom_search_space: Any = None
    pruner: Any = None
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

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> "SweeperSettings":
        """From the keyword arguments Hydra instantiates the sweeper with (resolved, plain)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:  # a typo in a subclass node, say: Hydra would accept it silently
            raise TypeError(f"unknown hydra.sweeper settings: {', '.join(unknown)}")

        def plain(node: Any) -> Any:
            return OmegaConf.to_container(node, resolve=True) \
                if OmegaConf.is_config(node) else node

        return cls(**{k: plain(v) for k, v in settings.items()})

    # ------------------------------------------------------------------ checks

    def check(self) -> "Checked":
        """Check every setting before anything runs (raises _SettingsError)."""
        directions = _directions(self.direction)
        names = None if self.objectives is None else \
            check_objectives(self.objectives, directions)
        constraints = _constraints(self.constraints)
        if constraints and names is None:
            raise _SettingsError("constraints", "need objectives: a job that returns a float "
                                                "has no metrics to check")
        check_count("n_trials", self.n_trials, 1, " (finished trials to reach)"
                    if self.resume_to_total is True else " (trials to run)")
        check_count("n_jobs", self.n_jobs, 1, " (trials launched together)")
        if not _is_number(self.max_failure_rate) or not 0 <= self.max_failure_rate <= 1:
            raise _SettingsError("max_failure_rate", f"must be a number in [0, 1], got "
                                                     f"{self.max_failure_rate!r}")
        if self.max_failures is not None:
            check_count("max_failures", self.max_failures, 1, " (failed trials in a row) or "
                                                               "null")
        check_flag("resume_to_total", self.resume_to_total)
        if self.resume_to_total and self.max_failures is None and self.max_failure_rate >= 1:
            raise _SettingsError("max_failures", "must be set with resume_to_total and "
                                                 "max_failure_rate 1: failed trials do not "
                                                 "count, so a broken setup would never stop")
        check_heartbeat(self.heartbeat_interval, self.grace_period)
        check_flag("plots", self.plots)
        check_study_name(self.study_name)
        check_storage(self.storage)
        check_component("sampler", self.sampler, "sampler")
        check_component("pruner", self.pruner, "pruner")
        if self.trial_node is not None and (not isinstance(self.trial_node, str) or
                                            not all(map(_NAME.match, self.trial_node.split(".")))):
            raise _SettingsError("trial_node", f"must be null or a config key such as optuna, "
                                               f"got {self.trial_node!r}")
        if self.app_name is not None and not isinstance(self.app_name, str):
            raise _SettingsError("app_name", f"must be null or a name, got {self.app_name!r}")
        return Checked(
            directions=directions, objective_names=names, constraints=constraints,
            validate_fn=_function("validator", self.validator),
            custom_fn=_function("custom_search_space", self.custom_search_space),
            callbacks=_callbacks(self.callbacks), mlflow=_mlflow(self.mlflow))


@dataclass
class Checked:
    """What ``SweeperSettings.check`` works out."""

    directions: List[str]
    objective_names: Optional[List[str]]
    constraints: List[Constraint]
    validate_fn: Optional[Callable[..., Any]]
    custom_fn: Optional[Callable[..., Any]]
    callbacks: List[Any]
    mlflow: Optional[Dict[str, Any]]

    @property
    def value_names(self) -> List[str]:
        """How progress lines and files name the values: the objectives, or ``value``."""
        if self.objective_names is not None:
            return self.objective_names
        n = len(self.directions)
        return ["value"] if n == 1 else [f"values_{i}" for i in range(n)]


def _function(key: str, path: Any) -> Optional[Callable[..., Any]]:
    """The function a dotted path names. A module name with hyphens
    (``custom-search-space-objective.configure``, hydra-optuna-sweeper's example) or a leading
    dot is a file next to the app's script."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip():
        raise _SettingsError(key, f"must be null or a function's dotted path, got {path!r}")
    from hydra.utils import get_method

    try:
        return get_method(path.lstrip("."))
    except Exception as err:
        module, _, name = path.lstrip(".").rpartition(".")
        script = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path.cwd()
        for folder in (script, Path.cwd()):
            found = folder / f"{module}.py"
            if module and found.is_file():
                spec = importlib.util.spec_from_file_location(module.replace("-", "_"), found)
                loaded = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(loaded)
                if callable(getattr(loaded, name, None)):
                    return getattr(loaded, name)
        raise _SettingsError(key, error_text(err)) from None


def _callbacks(items: Any) -> List[Any]:
    if items is None:
        return []
    if not isinstance(items, (list, tuple)):
        raise _SettingsError("callbacks", f"must be a list of _target_ nodes or dotted paths, "
                                          f"got {items!r}")
    from hydra.utils import get_object, instantiate

    out = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, Mapping) and "_target_" in item:
                out.append(instantiate(dict(item)))
            elif isinstance(item, str) and item.strip():
                target = get_object(item)
                out.append(target() if isinstance(target, type) else target)
            else:
                raise ValueError(f"expected a _target_ node or a dotted path, got {item!r}")
        except Exception as err:
            raise _SettingsError(f"callbacks.{i}", error_text(err.__cause__ or err)) from None
    return out


def _mlflow(node: Any) -> Optional[Dict[str, Any]]:
    if node is None:
        return None
    allowed = {"tracking_uri", "experiment_name", "run_name"}
    if not isinstance(node, Mapping) or set(node) - allowed:
        raise _SettingsError("mlflow", f"must be null or {{tracking_uri, experiment_name, "
                                       f"run_name}}, got {node!r}")
    return dict(node)
