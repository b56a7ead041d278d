"""A Hydra sweeper driving an Optuna (>= 4) study; a drop-in for hydra-optuna-sweeper.

The loop: ask up to ``n_jobs`` trials, turn each trial's parameters into Hydra overrides (Hydra's
sweep syntax in ``params`` or on the command line becomes Optuna distributions, as in
hydra-optuna-sweeper; ``custom_search_space`` suggests more), compose and validate every job's
config, launch the batch through Hydra's launcher (job folders are named by trial number), then
tell Optuna what each job returned:

- COMPLETE: the job's return value (a float, or one per direction), or with ``objectives`` the
  values they name in a ``JobResult``; ``constraints`` go to ``trial.set_constraint`` (feasible
  when every value <= 0; the samplers and ``study.best_trial`` read them from the trial);
- PRUNED: the job raised ``optuna.TrialPruned``;
- FAIL: the job raised or returned something unusable; ``user_attrs["error"]`` says why. After a
  batch, more than ``max_failure_rate`` of it failed stops the sweep with that error, as in
  hydra-optuna-sweeper; ``max_failures`` failures in a row stop it too.

With a storage the study can be resumed: the same command loads it and, with
``resume_to_total``, runs only the trials still missing to reach ``n_trials`` finished ones.
Trials left RUNNING by a killed sweep are reclaimed as FAIL through storage heartbeats.

Hydra loads plugin modules outside sys.modules: no ``from __future__ import annotations`` in
modules with dataclasses, and only typing's ``Optional``/``List`` in them, or dataclass() cannot
resolve the field types. Optuna, matplotlib and MLflow are imported when a sweep starts, not
when Hydra scans its plugins (``--help`` stays light). The helper modules start with ``_`` so
that Hydra's plugin scanner skips them: it re-executes every other module it finds, even one
already imported, which would redefine their classes.
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
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from hydra.core.override_parser.types import Quote, QuotedString
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

# Importing _config registers the sweeper, samplers and pruners in Hydra's ConfigStore.
from hydra_plugins.hydra_optuna5_sweeper import _config  # noqa: F401
from hydra_plugins.hydra_optuna5_sweeper._checks import (
    _SettingsError,
    check_study_name,
    probe_message,
    user_key,
)
from hydra_plugins.hydra_optuna5_sweeper._outputs import _OutputsMixin
from hydra_plugins.hydra_optuna5_sweeper._settings import Checked, SweeperSettings
from hydra_plugins.hydra_optuna5_sweeper._space import (
    SearchSpace,
    SpaceError,
    build_search_space,
    collect_params,
    grid_choices,
)
from hydra_plugins.hydra_optuna5_sweeper._study import _Heartbeat, _StudyError, _StudyMixin
from hydra_plugins.hydra_optuna5_sweeper._tell import _TellMixin
from hydra_plugins.hydra_optuna5_sweeper._util import _consecutive, _RedactLog, error_text, redact

log = logging.getLogger(__name__)

# OPTUNA5_SWEEPER_DEBUG=1: a bad setting's error line comes after its traceback.
DEBUG_ENV = "OPTUNA5_SWEEPER_DEBUG"


class OptunaSweeper(_StudyMixin, _TellMixin, _OutputsMixin, Sweeper):
    """Hydra sweeper running an Optuna study with ask-and-tell (see the module docstring).

    Args:
        **settings: the keys of ``hydra.sweeper`` (``SweeperSettings``).
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = SweeperSettings.of(settings)
        self.checked: Optional[Checked] = None
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self.raw_settings: Dict[str, Any] = {}
        self.study_name: Optional[str] = None
        self.storage_used: Optional[str] = None
        self.n_trials: int = 0
        self.is_grid = False
        self.rdb: Any = None
        self.run_trials: List[int] = []
        self._batch_failures = self._batch_size = 0
        self.job_idx = 0

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
        # The launcher logs every job's overrides, a storage URL among them: no password.
        for name in (type(self.launcher).__module__, __name__):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactLog) for f in logger.filters):
                logger.addFilter(_RedactLog())

    # ------------------------------------------------------------------ errors

    @property
    def app_name(self) -> str:
        """What error lines start with: ``app_name``, else ``hydra.job.name``."""
        name = self.settings.app_name if isinstance(self.settings.app_name, str) else None
        return name or OmegaConf.select(self.config, "hydra.job.name", default=None) or "optuna"

    def _fail(self, message: str, err: Optional[BaseException] = None) -> NoReturn:
        """A bad setting or search space: one line on stderr, exit status 2, before any trial
        (``OPTUNA5_SWEEPER_DEBUG=1``: the traceback first)."""
        err = err or sys.exc_info()[1]
        if os.environ.get(DEBUG_ENV) and err is not None:
            print(redact("".join(traceback.format_exception(err))), file=sys.stderr, end="")
        print(redact(f"{self.app_name}: error: {message}"), file=sys.stderr, flush=True)
        sys.exit(2)

    # ------------------------------------------------------------------ before running

    def _group_options(self, group: str) -> List[str]:
        try:
            return list(self.hydra_context.config_loader.get_group_options(group))
        except Exception:  # a group from a plugin's ConfigStore, say: do not guess
            return []

    def _check_job(self, overrides: Sequence[str]) -> Optional[Exception]:
        """Compose one job's config and validate it; the error, or None."""
        try:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            if self.checked.validate_fn is not None:
                self.checked.validate_fn(job_cfg)
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
                self._fail(f"{probe_message(err, point, varied)} [in search space point: "
                           f"{where}]", err)

    def _prepare(self, arguments: List[str]) -> SearchSpace:
        """Check the settings and build the search space, or fail with exit status 2."""
        s = self.settings
        try:
            self.checked = s.check()
            self.study_name = check_study_name(s.study_name) or self.sweep_dir.name
            choices = OmegaConf.select(self.config, "hydra.runtime.choices", default=None)
            params, origins = collect_params(s.params, s.group_params, choices or {},
                                             self._group_options)
            space = build_search_space(params, arguments, self.hydra_context.config_loader,
                                       origins)
            target = str((s.sampler or {}).get("_target_", ""))
            self.is_grid = target == "optuna.samplers.GridSampler"
            self.n_trials = s.n_trials
            if self.is_grid:
                size = 1
                for name, dist in space.distributions.items():
                    try:
                        size *= len(grid_choices(dist))
                    except ValueError as err:
                        raise SpaceError(name, str(err)) from None
                # As hydra-optuna-sweeper: no more trials than grid points.
                self.n_trials = min(self.n_trials, size)
                log.info(f"Updating num of trials to {self.n_trials} due to using GridSampler.")
        except _SettingsError as err:
            self._fail(f"{user_key(self.raw_settings, err.setting)}: {err.message}")
        except SpaceError as err:
            self._fail(str(err))
        return space

    # ------------------------------------------------------------------ the loop

    def sweep(self, arguments: List[str]) -> None:
        assert self.config is not None and self.hydra_context is not None
        space = self._prepare(arguments)
        node = self.settings.trial_node
        missing = object()
        plus = "++" if node and OmegaConf.select(self.config, node, default=missing) \
            is not missing else "+"
        probe_url = "sqlite:///probe.db" if self.settings.storage else None
        self._probe(space, self._handover(plus, probe_url, 0, 0))

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            study, url, self.rdb = self._open_study(self.study_name, space.distributions)
        except _StudyError as err:
            self._fail(str(err))
        # The results file, the callbacks and the console get the URL without its password.
        self.storage_used = redact(url) if url else None
        # hydra-optuna-sweeper's log lines
        log.info(f"Study name: {study.study_name}")
        log.info(f"Storage: {self.storage_used}")
        log.info(f"Sampler: {type(study.sampler).__name__}")
        log.info(f"Directions: {self.checked.directions}")
        self._hooks("on_study_start", study)
        self._reclaim_stale(study)
        done = self._n_done(study)
        where = redact(url) if url else "memory"
        names = ", ".join(self.checked.objective_names or ["the returned value"])
        if self.settings.resume_to_total:
            print(f"[optuna] study {self.study_name} ({', '.join(self.checked.directions)} "
                  f"{names}) in {where}: {done}/{self.n_trials} trials finished"
                  f"{', resuming' if done else ''}", flush=True)
        else:
            print(f"[optuna] study {self.study_name} ({', '.join(self.checked.directions)} "
                  f"{names}) in {where}: {self.n_trials} trials to run"
                  f"{f' ({done} finished before)' if done else ''}", flush=True)

        in_a_row, stop_error = self._loop(study, space, url, plus)
        if stop_error is not None:
            # As hydra-optuna-sweeper: the failed job's error ends the sweep, no results file.
            log.error("Failed %d times out of %d with max_failure_rate=%s.",
                      self._batch_failures, self._batch_size, self.settings.max_failure_rate)
            raise stop_error
        max_failures = self.settings.max_failures
        stopped = max_failures is not None and in_a_row >= max_failures
        if stopped:
            print(f"[optuna] stopping: {in_a_row} failed trials in a row "
                  f"(hydra.sweeper.max_failures={max_failures}); "
                  f"{self._progress_count(study)} finished", flush=True)
        self._finish(study, space)
        if stopped:
            print(f"{self.app_name}: error: search stopped after {in_a_row} failed trials in a "
                  f"row; see user_attrs['error'] in {self.sweep_dir / 'trials.csv'}",
                  file=sys.stderr)
            sys.exit(1)

    def _loop(self, study: Any, space: SearchSpace, url: Optional[str], plus: str
              ) -> Tuple[int, Optional[BaseException]]:
        """Run batches until done; (failed trials in a row, the error that stops it)."""
        s = self.settings
        in_a_row, asked = 0, 0
        while True:
            self._reclaim_stale(study)
            left = self.n_trials - (self._n_done(study) if s.resume_to_total else asked)
            if left <= 0 or (s.max_failures is not None and in_a_row >= s.max_failures):
                return in_a_row, None
            trials = []
            with warnings.catch_warnings():
                # "Heartbeat ... supposed to be used with Study.optimize": we beat ourselves.
                warnings.simplefilter("ignore")
                for _ in range(min(s.n_jobs, left)):
                    trials.append(study.ask(space.distributions))
            asked += len(trials)
            self.run_trials += [t.number for t in trials]
            errors = self._batch(study, space, trials, url, plus)
            for number in sorted(errors):
                in_a_row = in_a_row + 1 if errors[number] is not None else 0
            failed = [e for e in errors.values() if e is not None]
            self._batch_failures, self._batch_size = len(failed), len(trials)
            if failed and len(failed) / len(trials) > s.max_failure_rate:
                return in_a_row, failed[0]

    def _batch(self, study: Any, space: SearchSpace, trials: List[Any], url: Optional[str],
               plus: str) -> Dict[int, Optional[BaseException]]:
        """Launch one batch and tell Optuna how each trial ended; trial number -> error."""
        told: Dict[int, Optional[BaseException]] = {}
        beat = _Heartbeat(self.rdb, [t._trial_id for t in trials],
                          self.settings.heartbeat_interval) \
            if self.rdb is not None else contextlib.nullcontext()
        try:
            beat.__enter__()
            jobs = []
            for trial in trials:
                if self.checked.custom_fn is not None:
                    self._custom_params(trial, space)
                overrides = space.overrides(trial.params) + self._handover(
                    plus, url, trial._trial_id, trial.number)
                err = self._check_job(overrides)
                if err is None:
                    jobs.append((trial, overrides))
                    continue
                self._tell_fail(study, trial, f"invalid config: {error_text(err)}", None)
                told[trial.number] = err
                self._progress(study, trial.number, "FAIL", f"invalid config: "
                                                            f"{error_text(err)}")
            # With resume_to_total a job's folder is its trial's number (a rerun adds folders);
            # else jobs are numbered from 0 on each run, as hydra-optuna-sweeper numbers them.
            runs = _consecutive(jobs) if self.settings.resume_to_total else [jobs] if jobs \
                else []
            for run in runs:
                first = run[0][0].number if self.settings.resume_to_total else self.job_idx
                try:
                    returns = self.launcher.launch([o for _, o in run], initial_job_idx=first)
                except SystemExit as exit_:
                    # Hydra's job runner catches Exception only; a job calling sys.exit() is
                    # a failed trial too, not the end of the search.
                    for trial, _ in run:
                        err = RuntimeError(f"SystemExit: the job exited with status "
                                           f"{exit_.code}")
                        self._tell_fail(study, trial, str(err), None)
                        told[trial.number] = err
                        self._progress(study, trial.number, "FAIL", str(err))
                    continue
                finally:
                    self.job_idx += len(run)
                for (trial, _), ret in zip(run, returns, strict=True):
                    told[trial.number] = self._tell(study, trial, ret)
        except BaseException as err:
            for trial in trials:  # e.g. Ctrl-C: no trial of ours stays RUNNING
                if trial.number not in told:
                    self._tell_fail(study, trial, error_text(err), None)
            raise
        finally:
            beat.__exit__(None, None, None)
        return told

    def _custom_params(self, trial: Any, space: SearchSpace) -> None:
        """``custom_search_space(cfg, trial)``: what it suggests must not be fixed already."""
        self.checked.custom_fn(self.config, trial)
        fixed = {line.split("=", 1)[0].lstrip("+~") for line in space.fixed}
        overlap = sorted(fixed & {name.lstrip("+~") for name in trial.params})
        if overlap:
            raise ValueError(f"Overlapping fixed parameters and search space parameters "
                             f"found! Overlapping parameters: {overlap}")

    def _n_done(self, study: Any) -> int:
        from optuna.trial import TrialState

        return len(study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _progress_count(self, study: Any) -> str:
        """``finished/n_trials``: in the study (resume_to_total) or of this run."""
        if self.settings.resume_to_total:
            return f"{self._n_done(study)}/{self.n_trials}"
        mine = set(self.run_trials)
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)
                       if t.number in mine)
        return f"{finished}/{self.n_trials}"

    def _handover(self, plus: str, url: Optional[str], trial_id: int, number: int
                  ) -> List[str]:
        """With ``trial_node``: the overrides that tell a job which trial it runs."""
        node = self.settings.trial_node
        if not node:
            return []

        def quoted(text: Optional[str]) -> str:
            if text is None:
                return "null"
            return QuotedString(text=text, quote=Quote.single).with_quotes()

        return [f"{plus}{node}.study_name={quoted(self.study_name)}",
                f"{plus}{node}.storage={quoted(url)}",
                f"{plus}{node}.trial_id={trial_id}",
                f"{plus}{node}.trial_number={number}"]
