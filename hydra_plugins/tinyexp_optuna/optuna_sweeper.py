"""An Optuna sweeper for Hydra, written for Optuna >= 4 (hydra-optuna-sweeper pins optuna < 3).

The loop: ask up to ``n_jobs`` trials, turn each trial's parameters into Hydra overrides (Hydra's
sweep syntax in ``params`` or on the command line becomes Optuna distributions, as in
hydra-optuna-sweeper), validate every job's config, launch the batch through Hydra's launcher
(job folders are named by trial number), then tell Optuna what each job returned:

- COMPLETE: the objectives (``final/<metric>`` = ``metrics["<final_stage>/<metric>"]`` of the job's
  result dict), the constraints (``trial.set_constraint``: feasible when every value <= 0; the
  samplers and ``study.best_trial`` read them from the trial) and the final metrics as user attrs;
- PRUNED: the job raised ``optuna.TrialPruned``;
- FAIL: the job raised, returned NaN, or lacked a metric; ``user_attrs["error"]`` says why. The
  search goes on; only ``max_failures`` failures in a row stop it.

The study lives in a storage (SQLite in the sweep folder by default) and is the source of truth:
running the same command again loads it and runs only the trials still missing to reach
``n_trials`` COMPLETE (or PRUNED) trials. Trials left RUNNING by a killed sweep are reclaimed as
FAIL through storage heartbeats (``heartbeat_interval``, ``grace_period``).

Hydra loads plugin modules outside sys.modules: no ``from __future__ import annotations`` here,
and only typing's ``Optional``/``List`` in the dataclasses, or dataclass() cannot resolve the field
types. Optuna, matplotlib and MLflow are imported when a sweep starts, not when Hydra scans its
plugins (``--help`` stays light).

The code is split over the package: ``_config`` (config schema, ConfigStore registration),
``_space`` (search space), ``_settings`` (checks of the settings), ``_jobs`` (job results,
heartbeat), ``_study`` (storage and study), ``_tell`` (telling Optuna), ``_results``
(results files, plots, MLflow). This module keeps ``TinyexpOptunaSweeper`` and re-exports
the names other code imports from it. The helper modules start with ``_`` so that Hydra's
plugin scanner skips them: it re-executes every other module it finds, even one already
imported, which would redefine classes (``_SettingsError``) this module already holds.
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see the note above.
# ruff: noqa: UP006, UP035, UP045

import contextlib
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.types import Quote, QuotedString
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

# Importing _config registers the sweeper, samplers and pruners in Hydra's ConfigStore.
from hydra_plugins.tinyexp_optuna._config import (
    HyperbandPrunerConf,
    MedianPrunerConf,
    NopPrunerConf,
    NSGAIISamplerConf,
    RandomSamplerConf,
    TinyexpOptunaSweeperConf,
    TPESamplerConf,
)
from hydra_plugins.tinyexp_optuna._jobs import _consecutive, _error_text, _Heartbeat
from hydra_plugins.tinyexp_optuna._results import _ResultsMixin
from hydra_plugins.tinyexp_optuna._settings import (
    Constraint,
    _constraints,
    _directions,
    _SettingsError,
    check_component,
    check_count,
    check_flag,
    check_heartbeat,
    check_objectives,
    check_storage,
    check_study_name,
    probe_message,
    user_key,
)
from hydra_plugins.tinyexp_optuna._space import (
    SearchSpace,
    SpaceError,
    build_search_space,
    distribution_from_override,
)
from hydra_plugins.tinyexp_optuna._study import _StudyMixin
from hydra_plugins.tinyexp_optuna._tell import _TellMixin
from tinyexp.redact import redact

__all__ = [
    "Constraint",
    "HyperbandPrunerConf",
    "MedianPrunerConf",
    "NSGAIISamplerConf",
    "NopPrunerConf",
    "RandomSamplerConf",
    "SearchSpace",
    "TPESamplerConf",
    "TinyexpOptunaSweeper",
    "TinyexpOptunaSweeperConf",
    "build_search_space",
    "distribution_from_override",
]

log = logging.getLogger(__name__)


class _RedactLog(logging.Filter):
    """Log records without a URL's password (``user:***@host``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if redact(message) != message:
            record.msg, record.args = redact(message), None
        return True


def _fail(message: str, err: Optional[BaseException] = None) -> None:
    """A bad setting or search space: one line on stderr, exit status 2, before any trial
    (``TINYEXP_DEBUG=1``: the traceback first)."""
    err = err or sys.exc_info()[1]
    if os.environ.get("TINYEXP_DEBUG") and err is not None:
        print(redact("".join(traceback.format_exception(err))), file=sys.stderr, end="")
    print(redact(f"tinyexp: error: {message}"), file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------- the sweeper


class TinyexpOptunaSweeper(_StudyMixin, _TellMixin, _ResultsMixin, Sweeper):
    """Hydra sweeper running an Optuna study with ask-and-tell (see the module docstring)."""

    def __init__(self, sampler: Any, pruner: Any, direction: Any, objectives: Any,
                 constraints: Any, study_name: Optional[str], storage: Optional[str],
                 n_trials: int, n_jobs: int, max_failures: int, params: Any, group_params: Any,
                 heartbeat_interval: Optional[int], grace_period: Optional[int],
                 validator: Optional[str], plots: bool) -> None:
        def plain(node: Any) -> Any:
            return OmegaConf.to_container(node, resolve=True) \
                if OmegaConf.is_config(node) else node

        self.sampler_cfg = plain(sampler)
        self.pruner_cfg = plain(pruner)
        self.direction = plain(direction)
        self.objectives = plain(objectives)
        self.constraints_cfg = plain(constraints)
        self.study_name = study_name
        self.storage_url = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failures = max_failures
        self.params = plain(params)
        self.group_params = plain(group_params)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.validator = validator
        self.plots = plots
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self.parent_run_id: Optional[str] = None
        self.raw_settings: Dict[str, Any] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        # Unresolved, to name the key a setting came from (`n_trials: ${search.n_trials}`).
        self.raw_settings = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
        # The launcher logs every job's overrides, the storage URL among them: no password.
        for name in (type(self.launcher).__module__, __name__):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactLog) for f in logger.filters):
                logger.addFilter(_RedactLog())

    # ------------------------------------------------------------------ checks before running

    def _settings(self) -> None:
        """Check every setting before anything runs (raises _SettingsError)."""
        self.directions = _directions(self.direction)
        self.objective_names = check_objectives(self.objectives, self.directions)
        self.constraints = _constraints(self.constraints_cfg)
        check_count("n_trials", self.n_trials, 1, " (finished trials to reach)")
        check_count("n_jobs", self.n_jobs, 1, " (trials launched together)")
        check_count("max_failures", self.max_failures, 1, " (failed trials in a row)")
        check_heartbeat(self.heartbeat_interval, self.grace_period)
        check_flag("plots", self.plots)
        self.study_name = check_study_name(self.study_name)
        check_storage(self.storage_url)
        check_component("sampler", self.sampler_cfg, "sampler")
        check_component("pruner", self.pruner_cfg, "pruner")
        self.validate_fn = None
        if self.validator is not None:
            from hydra.utils import get_method

            if not isinstance(self.validator, str) or not self.validator.strip():
                raise _SettingsError("validator", f"must be null or a function's dotted path, "
                                                  f"got {self.validator!r}")
            try:
                self.validate_fn = get_method(self.validator)
            except Exception as err:
                raise _SettingsError("validator", _error_text(err)) from None

    def _params(self) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """``params``, plus the ``group_params`` of the options this sweep composed; and
        where each was written (for errors)."""
        if self.params is not None and not isinstance(self.params, Mapping):
            raise _SettingsError("params", f"must be a mapping of config keys to sweeps, e.g. "
                                           f"{{prune.ratio: interval(0.1, 0.9)}}, got "
                                           f"{self.params!r}")
        params = dict(self.params or {})
        origins = {key: f"hydra.sweeper.params.{key}" for key in params}
        if self.group_params is not None and not isinstance(self.group_params, Mapping):
            raise _SettingsError("group_params", f"expected {{group: {{option: {{key: sweep}}}}}}"
                                                 f", got {self.group_params!r}")
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default=None) or {}
        for group, by_option in (self.group_params or {}).items():
            if not isinstance(by_option, Mapping) or \
                    not all(v is None or isinstance(v, Mapping) for v in by_option.values()):
                raise _SettingsError(f"group_params.{group}", f"expected {{option: {{key: "
                                                              f"sweep}}}}, got {by_option!r}")
            if group not in choices:
                raise _SettingsError(f"group_params.{group}", f"{group!r} is not a config group "
                                                              f"of this app")
            known = self._group_options(group)
            for option in by_option:
                if known and option not in known:
                    raise _SettingsError(f"group_params.{group}.{option}",
                                         f"{group} has no option {option!r}; options: "
                                         f"{', '.join(sorted(known))}")
            extra = by_option.get(choices.get(group)) or {}
            params.update(extra)
            origins.update({key: f"hydra.sweeper.group_params.{group}.{choices.get(group)}.{key}"
                            for key in extra})
        return params, origins

    def _group_options(self, group: str) -> List[str]:
        try:
            return list(self.hydra_context.config_loader.get_group_options(group))
        except Exception:  # a group from a plugin's ConfigStore, say: do not guess
            return []

    def _job_error(self, overrides: Sequence[str]) -> Optional[str]:
        """Compose one job's config and validate it; the error as ``Type: message``, or None."""
        err = self._check_job(overrides)
        return None if err is None else _error_text(err)

    def _check_job(self, overrides: Sequence[str]) -> Optional[Exception]:
        assert self.hydra_context is not None and self.config is not None
        try:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            if self.validate_fn is not None:
                self.validate_fn(job_cfg)
        except Exception as err:
            return err
        return None

    def _probe(self, space: SearchSpace, handover: List[str]) -> None:
        """Validate the corners of the search space before anything runs: every choice of a
        categorical and both ends of a range, the other parameters at their first value. A
        search space that names a missing option or an out-of-range value stops here."""
        def first(dist: Any) -> Any:
            return dist.choices[0] if hasattr(dist, "choices") else dist.low

        def corners(dist: Any) -> List[Any]:
            return list(dist.choices) if hasattr(dist, "choices") else [dist.low, dist.high]

        base = {name: first(dist) for name, dist in space.distributions.items()}
        points = [(None, base)] + [(name, {**base, name: value})
                                   for name, dist in space.distributions.items()
                                   for value in corners(dist) if value != base[name]]
        for varied, point in points:
            err = self._check_job(space.overrides(point) + handover)
            if err is not None:
                where = " ".join(space.overrides(point)) or "(defaults)"
                _fail(f"{probe_message(err, point, varied)} [in search space point: {where}]",
                      err)

    # ------------------------------------------------------------------ the loop

    def sweep(self, arguments: List[str]) -> None:
        assert self.config is not None and self.hydra_context is not None
        try:
            self._settings()
            params, origins = self._params()
            space = build_search_space(params, arguments, self.hydra_context.config_loader,
                                       origins)
        except _SettingsError as err:
            _fail(f"{user_key(self.raw_settings, err.setting)}: {err.message}")
        except SpaceError as err:
            _fail(str(err))
        study_name = self.study_name or self.sweep_dir.name
        plus = "++" if "optuna" in self.config else "+"
        self._probe(space, self._handover(plus, study_name, "sqlite:///probe.db", 0, 0))

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study, url, rdb = self._open_study(study_name)
        # The results file, the MLflow tags and the console get the URL without its password.
        self.storage_used = redact(url)
        self._mlflow_parent(study, study_name)
        self._reclaim_stale(study)

        done = self._n_done(study)
        print(f"[optuna] study {study_name} ({', '.join(self.directions)} "
              f"{', '.join(self.objective_names)}) in {redact(url)}: {done}/{self.n_trials} trials "
              f"finished{', resuming' if done else ''}", flush=True)
        in_a_row = 0
        while True:
            self._reclaim_stale(study)
            done = self._n_done(study)
            if done >= self.n_trials or in_a_row >= self.max_failures:
                break
            size = min(self.n_jobs, self.n_trials - done)
            trials = []
            with warnings.catch_warnings():
                # "Heartbeat ... supposed to be used with Study.optimize": we beat ourselves.
                warnings.simplefilter("ignore")
                for _ in range(size):
                    trials.append(study.ask(space.distributions))
            told: Dict[int, str] = {}
            beat = _Heartbeat(rdb, [t._trial_id for t in trials], self.heartbeat_interval) \
                if rdb is not None else contextlib.nullcontext()
            try:
                beat.__enter__()
                jobs = []
                for trial in trials:
                    overrides = space.overrides(trial.params) + self._handover(
                        plus, study_name, url, trial._trial_id, trial.number)
                    error = self._job_error(overrides)
                    if error is None:
                        jobs.append((trial, overrides))
                        continue
                    self._tell_fail(study, trial, f"invalid config: {error}", None)
                    told[trial.number] = "FAIL"
                    self._progress(study, trial.number, "FAIL", f"invalid config: {error}")
                for run in _consecutive(jobs):
                    try:
                        returns = self.launcher.launch([o for _, o in run],
                                                       initial_job_idx=run[0][0].number)
                    except SystemExit as err:
                        # Hydra's job runner catches Exception only; a job calling sys.exit()
                        # is a failed trial too, not the end of the search.
                        for trial, _ in run:
                            error = f"SystemExit: the job exited with status {err.code}"
                            self._tell_fail(study, trial, error, None)
                            told[trial.number] = "FAIL"
                            self._progress(study, trial.number, "FAIL", error)
                        continue
                    for (trial, _), ret in zip(run, returns, strict=True):
                        told[trial.number] = self._tell(study, trial, ret)
            except BaseException as err:
                for trial in trials:  # e.g. Ctrl-C: no trial of ours stays RUNNING
                    if trial.number not in told:
                        self._tell_fail(study, trial, _error_text(err), None)
                raise
            finally:
                beat.__exit__(None, None, None)
            for state in told.values():
                in_a_row = in_a_row + 1 if state == "FAIL" else 0

        done = self._n_done(study)
        stopped = done < self.n_trials
        if stopped:
            print(f"[optuna] stopping: {in_a_row} failed trials in a row "
                  f"(hydra.sweeper.max_failures={self.max_failures}); {done}/{self.n_trials} "
                  f"finished", flush=True)
        self._finish(study, study_name, space)
        if stopped:
            print(f"tinyexp: error: search stopped after {in_a_row} failed trials in a row; "
                  f"see user_attrs['error'] in {self.sweep_dir / 'trials.csv'}", file=sys.stderr)
            sys.exit(1)

    @staticmethod
    def _n_done(study: Any) -> int:
        from optuna.trial import TrialState

        return len(study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED)))

    @staticmethod
    def _handover(plus: str, study_name: str, url: str, trial_id: int, number: int) -> List[str]:
        """The overrides that tell a job which trial it runs."""
        def quoted(text: str) -> str:
            return QuotedString(text=text, quote=Quote.single).with_quotes()

        return [f"{plus}optuna.study_name={quoted(study_name)}",
                f"{plus}optuna.storage={quoted(url)}",
                f"{plus}optuna.trial_id={trial_id}",
                f"{plus}optuna.trial_number={number}"]
