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
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Tuple

from hydra.core.override_parser.types import Quote, QuotedString
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# Importing _config registers the sweeper, samplers and pruners in Hydra's ConfigStore.
from hydra_plugins.hydra_optuna5_sweeper import _config  # noqa: F401
from hydra_plugins.hydra_optuna5_sweeper._checks import _first_line
from hydra_plugins.hydra_optuna5_sweeper._outputs import _OutputsMixin
from hydra_plugins.hydra_optuna5_sweeper._prepare import _PrepareMixin
from hydra_plugins.hydra_optuna5_sweeper._settings import Checked, SweeperSettings
from hydra_plugins.hydra_optuna5_sweeper._space import SearchSpace
from hydra_plugins.hydra_optuna5_sweeper._study import (
    _database_error,
    _Heartbeat,
    _StudyError,
    _StudyMixin,
)
from hydra_plugins.hydra_optuna5_sweeper._tell import _TellMixin
from hydra_plugins.hydra_optuna5_sweeper._util import (
    PASSWORD_ENV,
    _consecutive,
    _RedactLog,
    error_text,
    redact,
    split_password,
)

log = logging.getLogger(__name__)

# OPTUNA5_SWEEPER_DEBUG=1: a bad setting's error line comes after its traceback.
DEBUG_ENV = "OPTUNA5_SWEEPER_DEBUG"
# seconds between looks at the study while the trials still missing run in other processes
WAIT_SECONDS = 2.0


class OptunaSweeper(_PrepareMixin, _StudyMixin, _TellMixin, _OutputsMixin, Sweeper):
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
        self.rdb: Any = None  # the RDB storage to beat on (heartbeats on), else None
        self.rdb_storage: Any = None  # the RDB storage, heartbeats or not
        self.bare_storage: Optional[str] = None  # the storage URL without its password
        self.n_seen = 0  # trials in the study after this process last asked
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
        self._hide_password(config)
        # The launcher logs every job's overrides, a storage URL among them: no password.
        for name in (type(self.launcher).__module__, __name__):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactLog) for f in logger.filters):
                logger.addFilter(_RedactLog())

    def _hide_password(self, config: DictConfig) -> None:
        """A storage URL with a password: the password goes to the jobs through the
        environment (``storage_url`` puts it back), and the configs Hydra saves in every job
        folder (``hydra.sweeper.storage``, the command line's ``hydra.overrides.hydra``) get
        the URL without it. The sweeper itself keeps the whole URL."""
        url = self.settings.storage
        bare, password = split_password(url) if isinstance(url, str) else (url, None)
        if password is None:
            return
        os.environ[PASSWORD_ENV] = password
        self.bare_storage = bare
        with read_write(config), open_dict(config):
            config.hydra.sweeper.storage = bare
            config.hydra.overrides.hydra = [split_password(str(o))[0]
                                            for o in config.hydra.overrides.hydra]

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
        job_url = split_password(url)[0] if url else None  # the password: PASSWORD_ENV
        # hydra-optuna-sweeper's log lines
        log.info(f"Study name: {study.study_name}")
        log.info(f"Storage: {self.storage_used}")
        log.info(f"Sampler: {type(study.sampler).__name__}")
        log.info(f"Directions: {self.checked.directions}")
        with self._study_lock():  # workers sharing the storage start it one at a time
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

        try:
            in_a_row, stop_error = self._loop(study, space, job_url, plus)
        except Exception as err:
            if not _database_error(err):
                raise
            # The database went away for longer than a reconnect: one line; what finished is
            # saved, and trials left RUNNING are reclaimed (heartbeats) when the search resumes.
            print(redact(f"{self.app_name}: error: hydra.sweeper.storage: the study's database "
                         f"({self.storage_used}) stopped answering: {_first_line(err)[:300]}; "
                         f"finished trials are saved: rerun the same command to resume"),
                  file=sys.stderr, flush=True)
            sys.exit(1)
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
        in_a_row, asked, waited = 0, 0, False
        while True:
            self._reclaim_stale(study)
            if s.max_failures is not None and in_a_row >= s.max_failures:
                return in_a_row, None
            # Counted and asked under the study's lock: workers sharing the storage see each
            # other's trials, so n_trials is reached exactly, never overshot.
            with self._study_lock():
                done = self._n_done(study) if s.resume_to_total else asked
                if done >= self.n_trials:
                    return in_a_row, None
                # RUNNING trials of other workers count while their process lives (with
                # heartbeats a dead one's are failed after grace_period, then rerun here).
                running = self._n_running(study) if s.resume_to_total and self.rdb else 0
                self._reseed_if_shared(study, space.distributions)
                trials = []
                with warnings.catch_warnings():
                    # "Heartbeat ... supposed to be used with Study.optimize": we beat ourselves.
                    warnings.simplefilter("ignore")
                    for _ in range(min(s.n_jobs, self.n_trials - done - running)):
                        trials.append(study.ask(space.distributions))
            if not trials:
                if not waited:
                    print(f"[optuna] {done}/{self.n_trials} finished, {running} running in "
                          f"other processes: waiting for them", flush=True)
                waited = True
                time.sleep(WAIT_SECONDS)
                continue
            waited = False
            self.n_seen += len(trials)
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
                    try:
                        self._tell_fail(study, trial, error_text(err), None)
                    except Exception:  # the database is gone: heartbeats reclaim it later
                        log.warning("trial %d could not be marked FAIL", trial.number)
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

    def _n_running(self, study: Any) -> int:
        from optuna.trial import TrialState

        return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

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

        def quoted(text: Optional[str]) -> str:
            if text is None:
                return "null"
            return QuotedString(text=text, quote=Quote.single).with_quotes()

        # a URL with a password given in a config file: the job's saved config gets it bare
        hidden = [f"hydra.sweeper.storage={quoted(self.bare_storage)}"] \
            if self.bare_storage else []
        if not node:
            return hidden
        return hidden + [f"{plus}{node}.study_name={quoted(self.study_name)}",
                         f"{plus}{node}.storage={quoted(url)}",
                         f"{plus}{node}.trial_id={trial_id}",
                         f"{plus}{node}.trial_number={number}"]
