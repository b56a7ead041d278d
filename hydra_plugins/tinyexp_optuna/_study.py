"""The Optuna study of a sweep: its storage (SQLite, another SQLAlchemy URL or a journal file),
sampler and pruner, opening or resuming it, and reclaiming trials of dead processes
(``_StudyMixin``, a base class of ``TinyexpOptunaSweeper``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Tuple

# The logger of the module this code was split out of, so log lines keep their name.
log = logging.getLogger("hydra_plugins.tinyexp_optuna.optuna_sweeper")


class _StudyMixin:
    """Study and storage methods of ``TinyexpOptunaSweeper`` (uses its settings)."""

    # ------------------------------------------------------------------ study and storage

    def _storage(self) -> Tuple[Any, str, Any]:
        """(storage for create_study, the string the jobs get, the heartbeat-capable RDB)."""
        import optuna

        url = self.storage_url or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        if "://" not in url:  # an Optuna journal file
            from optuna.storages.journal import JournalFileBackend

            path = Path(url).absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.heartbeat_interval:
                log.warning("journal storage %s has no heartbeats: a killed sweep leaves its "
                            "running trials RUNNING", path)
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            return storage, str(path), None
        engine_kwargs = None
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            # Absolute, so a job that changes its working directory still finds the study.
            path = path if path.is_absolute() else path.absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}"
            # Jobs report intermediate values to the same file while the heartbeat writes:
            # wait for the lock instead of failing with "database is locked".
            engine_kwargs = {"connect_args": {"timeout": 60}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental" since 2.9
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=self.heartbeat_interval,
                grace_period=self.grace_period)
        return storage, url, storage if self.heartbeat_interval else None

    def _sampler(self, n_existing: int) -> Any:
        """The configured sampler. A resumed study reseeds it (seed + trials so far): with the
        first seed it would replay the random start-up points the study already has."""
        from hydra.utils import instantiate

        cfg = dict(self.sampler_cfg or {"_target_": "optuna.samplers.TPESampler"})
        if n_existing and cfg.get("seed") is not None:
            cfg["seed"] = int(cfg["seed"]) + n_existing
        return instantiate(cfg)

    def _pruner(self) -> Any:
        import optuna
        from hydra.utils import instantiate

        return instantiate(self.pruner_cfg) if self.pruner_cfg else optuna.pruners.NopPruner()

    def _open_study(self, study_name: str) -> Tuple[Any, str, Any]:
        import optuna

        storage, url, rdb = self._storage()
        try:
            study = optuna.create_study(study_name=study_name, storage=storage,
                                        sampler=self._sampler(0), pruner=self._pruner(),
                                        directions=self.directions, load_if_exists=True)
        except ValueError as err:  # e.g. the stored study has other directions
            print(f"tinyexp: error: study {study_name} in {url}: {err}", file=sys.stderr)
            sys.exit(2)
        if [d.name.lower() for d in study.directions] != self.directions:
            print(f"tinyexp: error: study {study_name} in {url} has directions "
                  f"{[d.name.lower() for d in study.directions]}, the config asks for "
                  f"{self.directions}", file=sys.stderr)
            sys.exit(2)
        n_existing = len(study.get_trials(deepcopy=False))
        if n_existing:
            study.sampler = self._sampler(n_existing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental API
            study.set_metric_names(self.objective_names)
        return study, url, rdb

    def _reclaim_stale(self, study: Any) -> None:
        """Fail trials whose process died (no heartbeat for ``grace_period`` seconds)."""
        import optuna
        from optuna.trial import TrialState

        running = [t.number for t in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))]
        if not running:
            return
        optuna.storages.fail_stale_trials(study)
        now_failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.number in running]
        if now_failed:
            print(f"[optuna] reclaimed trial(s) {', '.join(map(str, now_failed))}: RUNNING "
                  f"without a heartbeat for over {self.grace_period or 'twice the interval'} s "
                  f"(their process died), now FAIL", flush=True)
