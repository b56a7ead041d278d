"""The Optuna study of a sweep: its storage (in memory, an SQLAlchemy URL or a journal file),
sampler and pruner, opening or resuming it, the heartbeat of its RUNNING trials and
reclaiming the trials of dead processes (``_StudyMixin``, a base class of ``OptunaSweeper``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import contextlib
import hashlib
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from hydra_plugins.hydra_optuna5_sweeper._space import grid_choices
from hydra_plugins.hydra_optuna5_sweeper._util import error_text

log = logging.getLogger("hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper")


class _StudyError(Exception):
    """The stored study does not fit the config (other directions, say)."""


def _database_error(err: BaseException) -> bool:
    """The study's database failed (not the job, not a bug): Optuna's storage error, or the
    database driver's (through SQLAlchemy): a lost connection, a colliding insert."""
    from optuna.exceptions import StorageInternalError

    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:  # no RDB storage without SQLAlchemy
        return isinstance(err, StorageInternalError)
    return isinstance(err, (StorageInternalError, DBAPIError))


class _StudyMixin:
    """Study and storage methods of ``OptunaSweeper`` (uses its settings)."""

    def _storage(self) -> Tuple[Any, Optional[str], Any]:
        """(storage for create_study, the URL the jobs get, the heartbeat-capable RDB)."""
        import optuna

        s = self.settings
        url = s.storage
        if url is None:
            return None, None, None
        if "://" not in url:  # an Optuna journal file
            from optuna.storages.journal import JournalFileBackend

            path = Path(url).absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            if s.heartbeat_interval:
                log.warning("journal storage %s has no heartbeats: a killed sweep leaves its "
                            "running trials RUNNING", path)
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
            return storage, str(path), None
        # A database server that restarted: a pooled connection is checked before use, and
        # replaced, instead of failing the next query.
        engine_kwargs: Optional[Dict[str, Any]] = {"pool_pre_ping": True}
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            # Absolute, so a job that changes its working directory still finds the study.
            path = path if path.is_absolute() else path.absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}"
            # Jobs report intermediate values to the same file while the heartbeat writes:
            # wait for the lock instead of failing with "database is locked".
            engine_kwargs = {"connect_args": {"timeout": 60}}
        # Workers starting together on a new database each create Optuna's tables; all but one
        # collide (a duplicate alembic version row) while the first commits: try again.
        for attempt in range(4):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # heartbeat_interval: "experimental"
                    storage = optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs, heartbeat_interval=s.heartbeat_interval,
                        grace_period=s.grace_period)
                break
            except Exception as err:
                if attempt == 3 or not _database_error(err):
                    raise
                log.info("creating the storage's tables collided (%s): trying again",
                         error_text(err))
                time.sleep(1 + attempt)
        self.rdb_storage = storage
        return storage, url, storage if s.heartbeat_interval else None

    def _sampler(self, n_existing: int, distributions: Dict[str, Any]) -> Any:
        """The configured sampler. A resumed study reseeds it (seed + trials so far): with the
        first seed it would replay the random start-up points the study already has."""
        from hydra.utils import instantiate

        cfg = dict(self.settings.sampler or {"_target_": "optuna.samplers.TPESampler"})
        if n_existing and cfg.get("seed") is not None:
            cfg["seed"] = int(cfg["seed"]) + n_existing
        sampler = instantiate(cfg)
        if self.is_grid:  # a partial: the grid comes from the search space
            sampler = sampler({name: grid_choices(dist) for name, dist in distributions.items()})
        return sampler

    def _pruner(self) -> Any:
        import optuna
        from hydra.utils import instantiate

        cfg = self.settings.pruner
        return instantiate(cfg) if cfg else optuna.pruners.NopPruner()

    def _open_study(self, study_name: str, distributions: Dict[str, Any]
                    ) -> Tuple[Any, Optional[str], Any]:
        """(study, storage URL for the jobs, RDB storage to beat on or None).

        Raises:
            _StudyError: the stored study cannot be resumed with this config.
        """
        import optuna

        storage, url, rdb = self._storage()
        directions = self.checked.directions
        try:
            study = optuna.create_study(study_name=study_name, storage=storage,
                                        sampler=self._sampler(0, distributions),
                                        pruner=self._pruner(), directions=directions,
                                        load_if_exists=True)
        except ValueError as err:  # e.g. the stored study has other directions
            raise _StudyError(f"study {study_name} in {url}: {err}") from None
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise _StudyError(f"study {study_name} in {url} has directions {stored}, the "
                              f"config asks for {directions}")
        n_existing = len(study.get_trials(deepcopy=False))
        if n_existing:
            study.sampler = self._sampler(n_existing, distributions)
        self.n_seen = n_existing
        if self.checked.objective_names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental API
                study.set_metric_names(self.checked.objective_names)
        return study, url, rdb

    @contextlib.contextmanager
    def _study_lock(self) -> Iterator[None]:
        """Held by one process at a time among those sharing the study's storage: counting
        the study's trials and asking new ones under it, workers reach ``n_trials`` exactly.

        PostgreSQL: an advisory lock (keyed by the study's name) on a connection of its own;
        MySQL: ``GET_LOCK``; SQLite and journal files: a lock file beside them (one machine);
        in memory: nothing to share.
        """
        url = self.settings.storage
        key = hashlib.sha256(f"hydra-optuna5-sweeper:{self.study_name}".encode()).digest()
        if not url:
            yield
        elif url.startswith(("postgresql", "mysql")):
            from sqlalchemy import text

            pg = url.startswith("postgresql")
            number = int.from_bytes(key[:8], "big", signed=True)
            lock, unlock = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)")
                            if pg else ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"))
            arg = {"k": number if pg else key.hex()[:60]}
            with self.rdb_storage.engine.connect() as conn:
                conn.execute(text(lock), arg)
                try:
                    yield
                finally:
                    conn.execute(text(unlock), arg)
        else:
            import fcntl

            path = Path(url[len("sqlite:///"):] if url.startswith("sqlite:///") else url)
            with open(f"{path.absolute()}.{key.hex()[:12]}.lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _reseed_if_shared(self, study: Any, distributions: Dict[str, Any]) -> None:
        """Trials this process did not ask for appeared (other workers share the study): reseed
        the sampler (seed + trials so far), or workers seeded alike would all draw the same
        points. A study with one worker is never reseeded here, so it stays reproducible."""
        n = len(study.get_trials(deepcopy=False))
        if n != self.n_seen:
            study.sampler = self._sampler(n, distributions)
            self.n_seen = n

    def _reclaim_stale(self, study: Any) -> None:
        """Fail trials whose process died (no heartbeat for ``grace_period`` seconds)."""
        import optuna
        from optuna.trial import TrialState

        if self.rdb is None:
            return
        running = [t.number for t in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))]
        if not running:
            return
        optuna.storages.fail_stale_trials(study)
        now_failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.number in running]
        if now_failed:
            print(f"[optuna] reclaimed trial(s) {', '.join(map(str, now_failed))}: RUNNING "
                  f"without a heartbeat for over "
                  f"{self.settings.grace_period or 'twice the interval'} s (their process "
                  f"died), now FAIL", flush=True)


class _Heartbeat:
    """Records the heartbeat of a batch's RUNNING trials while their jobs run.

    Optuna beats only inside ``Study.optimize``; an ask-and-tell loop has to do it itself.
    """

    def __init__(self, storage: Any, trial_ids: Sequence[int], interval: int) -> None:
        self._storage = storage
        self._ids = list(trial_ids)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self._ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as err:  # a busy database must not end the beat
                    log.warning("heartbeat of trial id %d: %s", trial_id, error_text(err))
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
