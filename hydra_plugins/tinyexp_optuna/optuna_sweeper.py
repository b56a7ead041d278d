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
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see the note above.
# ruff: noqa: UP006, UP035, UP045

import contextlib
import logging
import math
import os
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    RangeSweep,
    Transformer,
)
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- config schema


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = "${oc.select:seed,null}"  # the experiment's seed
    n_startup_trials: int = 10  # random trials before TPE models the results
    constant_liar: bool = True  # trials of one batch avoid each other's points


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = "${oc.select:seed,null}"
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = "${oc.select:seed,null}"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # never prune before this many trials finished
    n_warmup_steps: int = 2  # nor before a trial reported this many fine-tuning epochs
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


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
    objectives: List[str] = field(default_factory=lambda: ["final/f1"])
    # [{metric: final/flash_bytes, max: 131072}, ...]: feasible when value <= max (or >= min).
    constraints: List[Any] = field(default_factory=list)
    # null: the sweep folder's name.
    study_name: Optional[str] = None
    # null: sqlite:///<sweep dir>/optuna.db. An SQLAlchemy URL, or the path of an Optuna journal
    # file (a journal has no heartbeats). SQLite on a network filesystem locks or corrupts:
    # there, use a database server.
    storage: Optional[str] = None
    # Target number of finished (COMPLETE or PRUNED) trials in the study, counting earlier runs.
    n_trials: int = 20
    # Trials asked together and launched as one batch through Hydra's launcher.
    n_jobs: int = 1
    # Stop after this many failed trials in a row (a broken setup must not loop forever).
    max_failures: int = 10
    # key -> Hydra sweep syntax: interval(0.1, 0.9), int(interval(2, 8)), range(2, 9),
    # choice(a, b), tag(log, interval(1e-4, 1e-1)); plain values are fixed overrides.
    params: Optional[Dict[str, str]] = None
    # More params by the option chosen in a config group, {group: {option: {key: sweep}}}, e.g.
    # {arch: {cnn: {arch.channels: "choice([32,16],[16,8])"}, lstm: {arch.hidden_size: ...}}}:
    # the architecture's width where it has one.
    group_params: Optional[Dict[str, Any]] = None
    # Seconds between heartbeats of RUNNING trials; a trial without one for `grace_period`
    # seconds belongs to a dead process and is failed when a sweep (re)starts. Keep the grace
    # period above the longest stall of the sweeper process (null: no heartbeats).
    heartbeat_interval: Optional[int] = 60
    grace_period: Optional[int] = 120
    # Called with every job's composed config before it is launched; raises on a bad config.
    validator: Optional[str] = "tinyexp.config.validate"
    # Save Optuna's plots (optimization history, importances, Pareto front) as PNG.
    plots: bool = True


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


# ----------------------------------------------------------------------------- search space


def _override_string(value: Any) -> str:
    """A parsed Hydra value back in override syntax (lists stay lists, strings are escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return Override._get_value_element_as_str(value)


def distribution_from_override(override: Override) -> Tuple[Any, Optional[Dict[Any, str]]]:
    """The Optuna distribution of one sweep override, as hydra-optuna-sweeper does it.

    Returns:
        The distribution, and for a categorical one the override string of each choice
        (``choice([32,16],[16,8])`` has the choices ``"[32,16]"``, ``"[16,8]"``, which must go
        back to Hydra as lists, not as quoted strings).
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    def categorical(values: Sequence[Any]) -> Tuple[Any, Dict[Any, str]]:
        strings: Dict[Any, str] = {}
        for value in values:
            # Optuna stores str, int, float, bool or None; anything else by its override text.
            key = value if value is None or isinstance(value, (str, int, float, bool)) \
                else Transformer.encode(value)
            strings[key] = _override_string(value)
        return CategoricalDistribution(list(strings)), strings

    value = override.value()
    if override.is_choice_sweep():
        return categorical(list(override.sweep_iterator(transformer=Transformer.identity)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise ValueError(f"{override.input_line}: empty range")
        if value.shuffle or len(values) == 1:
            return categorical(values)
        low, high, step = min(values), max(values), abs(value.step)
        # Hydra's range, like Python's, excludes its stop value; Optuna's bounds are inclusive.
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(int(low), int(high), step=int(step)), None
        return FloatDistribution(float(low), float(high), step=float(step)), None
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):  # int(interval(a, b))
            return IntDistribution(value.start, value.end, log=log_scale), None
        return FloatDistribution(float(value.start), float(value.end), log=log_scale), None
    raise ValueError(f"{override.input_line}: not a sweep the Optuna sweeper supports")


@dataclass
class SearchSpace:
    """What the trials vary (Optuna distributions) and what every job gets as is."""

    distributions: Dict[str, Any]
    choice_strings: Dict[str, Dict[Any, str]]
    fixed: List[str]

    def overrides(self, params: Mapping[str, Any]) -> List[str]:
        """Hydra overrides for one point of the space."""
        out = list(self.fixed)
        for name, value in params.items():
            strings = self.choice_strings.get(name)
            if strings is not None and value in strings:
                out.append(f"{name}={strings[value]}")
            elif isinstance(value, float):
                out.append(f"{name}={value!r}")
            else:
                out.append(f"{name}={_override_string(value)}")
        return out


def build_search_space(params: Optional[Mapping[str, Any]], arguments: Sequence[str],
                       config_loader: Any = None) -> SearchSpace:
    """``params`` of the sweeper config, then the command line (which wins for the same key)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(lines)
    by_key: Dict[str, Override] = {}
    for override in parsed:
        by_key.pop(override.get_key_element(), None)  # keep command-line order for the rest
        by_key[override.get_key_element()] = override
    distributions: Dict[str, Any] = {}
    choice_strings: Dict[str, Dict[Any, str]] = {}
    fixed: List[str] = []
    for key, override in by_key.items():
        if override.is_sweep_override():
            distribution, strings = distribution_from_override(override)
            distributions[key] = distribution
            if strings is not None:
                choice_strings[key] = strings
        else:
            fixed.append(str(override.input_line))
    return SearchSpace(distributions, choice_strings, fixed)


# ----------------------------------------------------------------------------- settings


@dataclass
class Constraint:
    """``metric <= max`` (or ``metric >= min``), told to Optuna as ``value - max <= 0``."""

    metric: str
    bound: float
    upper: bool = True

    @property
    def key(self) -> str:
        return self.metric if self.upper else f"{self.metric}>="

    def violation(self, value: float) -> float:
        return value - self.bound if self.upper else self.bound - value

    def describe(self, value: float) -> str:
        sign = "<=" if self.upper else ">="
        mark = "ok" if self.violation(value) <= 0 else "OVER" if self.upper else "UNDER"
        return f"{self.metric.split('/')[-1]} {_fmt(value)} {sign} {_fmt(self.bound)} {mark}"


class _SettingsError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"hydra.sweeper.{key}: {message}")


def _directions(direction: Any) -> List[str]:
    items = [direction] if isinstance(direction, str) else list(direction or [])
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in ("minimize", "maximize") for n in names):
        raise _SettingsError("direction", f"must be minimize, maximize or a list of them, "
                                          f"got {direction!r}")
    return names


def _constraints(items: Any) -> List[Constraint]:
    out = []
    for item in items or []:
        if not isinstance(item, Mapping) or "metric" not in item or \
                sum(k in item for k in ("max", "min")) != 1:
            raise _SettingsError("constraints", f"each entry is {{metric: ..., max: ...}} or "
                                                f"{{metric: ..., min: ...}}, got {item!r}")
        bound = item.get("max", item.get("min"))
        try:
            bound = float(bound)
        except (TypeError, ValueError):
            raise _SettingsError("constraints", f"{item['metric']}: bound must be a number, "
                                                f"got {bound!r}") from None
        out.append(Constraint(str(item["metric"]), bound, upper="max" in item))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


# ----------------------------------------------------------------------------- job results


class _Rejected(Exception):
    """A job result the sweeper cannot tell as COMPLETE (missing or non-finite metric)."""


def _error_text(err: BaseException) -> str:
    """``Type: message`` on one line (without the search path Hydra appends to its errors)."""
    message = str(err).split("Config search path:")[0]
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return f"{type(err).__name__}: {message}"[:2000]


@dataclass
class _Result:
    """What one job returned, read through the job contract of tinyexp.pipeline.run."""

    objective: Optional[float]
    final_stage: Optional[str]
    metrics: Dict[str, float]
    extra: Dict[str, Any]

    @classmethod
    def of(cls, value: Any) -> "_Result":
        if isinstance(value, Mapping):
            metrics = dict(value.get("metrics") or {})
            extra = {k: v for k, v in value.items()
                     if k not in ("objective", "final_stage", "metrics")}
            objective = value.get("objective")
            return cls(None if objective is None else float(objective),
                       value.get("final_stage"), metrics, extra)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(float(value), None, {}, {})
        raise _Rejected(f"the job returned {type(value).__name__}, expected a dict with "
                        f"objective, final_stage and metrics")

    def get(self, name: str) -> float:
        """``objective``, ``final/<metric>`` or ``<stage>/<metric>``, finite."""
        if name == "objective":
            value: Any = self.objective
        else:
            key = name
            if name.startswith("final/"):
                if not self.final_stage:
                    raise _Rejected(f"{name}: the job returned no final_stage")
                key = f"{self.final_stage}/{name[len('final/'):]}"
            if key not in self.metrics:
                raise _Rejected(f"{name}: no metric {key} in the job's result")
            value = self.metrics[key]
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise _Rejected(f"{name} is {value!r}, not a number") from None
        if not math.isfinite(value):
            raise _Rejected(f"{name} is {value}")
        return value

    def final_metrics(self) -> Dict[str, float]:
        """The last stage's metrics as ``final/<metric>`` (finite numbers only)."""
        prefix = f"{self.final_stage}/"
        out = {}
        for key, value in self.metrics.items():
            if key.startswith(prefix) and isinstance(value, (int, float)) and \
                    not isinstance(value, bool) and math.isfinite(value):
                out[f"final/{key[len(prefix):]}"] = value
        return out


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
                    log.warning("heartbeat of trial id %d: %s", trial_id, _error_text(err))
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _consecutive(jobs: List[Tuple[Any, List[str]]]) -> List[List[Tuple[Any, List[str]]]]:
    """Split a batch into runs of consecutive trial numbers (the launcher numbers job folders
    from ``initial_job_idx`` on; another process on the same study can leave gaps)."""
    runs: List[List[Tuple[Any, List[str]]]] = []
    for job in jobs:
        if runs and job[0].number == runs[-1][-1][0].number + 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


# ----------------------------------------------------------------------------- the sweeper


class TinyexpOptunaSweeper(Sweeper):
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

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()

    # ------------------------------------------------------------------ checks before running

    def _settings(self) -> None:
        self.directions = _directions(self.direction)
        objectives = [self.objectives] if isinstance(self.objectives, str) \
            else list(self.objectives or [])
        if len(objectives) != len(self.directions):
            raise _SettingsError("objectives", f"one per direction ({len(self.directions)}: "
                                               f"{', '.join(self.directions)}), got {objectives}")
        self.objective_names = [str(o) for o in objectives]
        self.constraints = _constraints(self.constraints_cfg)
        for key, low in (("n_trials", 1), ("n_jobs", 1), ("max_failures", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or value < low:
                raise _SettingsError(key, f"must be an int >= {low}, got {value!r}")
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise _SettingsError(key, f"must be null or an int >= 1 (seconds), got {value!r}")
        self.validate_fn = None
        if self.validator:
            from hydra.utils import get_method

            try:
                self.validate_fn = get_method(self.validator)
            except Exception as err:
                raise _SettingsError("validator", _error_text(err)) from None

    def _params(self) -> Dict[str, Any]:
        """``params``, plus the ``group_params`` of the options this sweep composed."""
        params = dict(self.params or {})
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default=None) or {}
        for group, by_option in (self.group_params or {}).items():
            if not isinstance(by_option, Mapping):
                raise _SettingsError("group_params", f"{group}: expected {{option: {{key: "
                                                     f"sweep}}}}, got {by_option!r}")
            extra = by_option.get(choices.get(group)) or {}
            params.update(extra)
        return params

    def _job_error(self, overrides: Sequence[str]) -> Optional[str]:
        """Compose one job's config and validate it; the error as ``Type: message``, or None."""
        assert self.hydra_context is not None and self.config is not None
        try:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            if self.validate_fn is not None:
                self.validate_fn(job_cfg)
        except Exception as err:
            return _error_text(err)
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
        points = [base] + [{**base, name: value}
                           for name, dist in space.distributions.items()
                           for value in corners(dist) if value != base[name]]
        for point in points:
            overrides = space.overrides(point) + handover
            error = self._job_error(overrides)
            if error is not None:
                message = error.split(": ", 1)[1] if error.startswith("ConfigError: ") else error
                where = " ".join(space.overrides(point)) or "(defaults)"
                print(f"tinyexp: error: {message} [in search space point: {where}]",
                      file=sys.stderr)
                sys.exit(2)

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
        # The jobs load the study by name; the pruner is not stored with it, so its config is.
        study.set_user_attr("tinyexp.pruner", self.pruner_cfg or None)
        study.set_user_attr("tinyexp.objectives", self.objective_names)
        study.set_user_attr("tinyexp.constraints", self.constraints_cfg or [])
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

    # ------------------------------------------------------------------ the loop

    def sweep(self, arguments: List[str]) -> None:
        assert self.config is not None and self.hydra_context is not None
        try:
            self._settings()
            space = build_search_space(self._params(), arguments,
                                       self.hydra_context.config_loader)
        except (_SettingsError, ValueError) as err:
            message = str(err) if isinstance(err, _SettingsError) else \
                f"hydra.sweeper.params: {err}"
            print(f"tinyexp: error: {message}", file=sys.stderr)
            sys.exit(2)
        study_name = self.study_name or self.sweep_dir.name
        plus = "++" if "optuna" in self.config else "+"
        self._probe(space, self._handover(plus, study_name, "sqlite:///probe.db", 0, 0))

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study, url, rdb = self._open_study(study_name)
        self.storage_used = url
        study.set_user_attr("tinyexp.fixed_overrides", space.fixed)
        self._mlflow_parent(study, study_name)
        self._reclaim_stale(study)

        done = self._n_done(study)
        print(f"[optuna] study {study_name} ({', '.join(self.directions)} "
              f"{', '.join(self.objective_names)}) in {url}: {done}/{self.n_trials} trials "
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

    # ------------------------------------------------------------------ telling Optuna

    def _tell_fail(self, study: Any, trial: Any, error: str, job_dir: Optional[str]) -> None:
        from optuna.trial import TrialState

        try:
            trial.set_user_attr("error", error)
            if job_dir:
                trial.set_user_attr("job_dir", job_dir)
        except Exception as err:  # already failed as stale by another process
            log.warning("trial %d: could not record its error: %s", trial.number, err)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def _tell(self, study: Any, trial: Any, ret: Any) -> str:
        """Tell Optuna how one job ended; print its progress line; return the state's name."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        job_dir = self._job_dir(ret)
        value = ret._return_value  # `.return_value` would re-raise a job's exception
        if ret.status != JobStatus.COMPLETED:
            if type(value).__name__ == "TrialPruned":  # optuna.TrialPruned, maybe unpickled
                try:
                    trial.set_user_attr("pruned", _error_text(value))
                    if job_dir:
                        trial.set_user_attr("job_dir", job_dir)
                except Exception as err:
                    log.warning("trial %d: %s", trial.number, err)
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                steps = next(t.intermediate_values for t in study.get_trials(deepcopy=False)
                             if t.number == trial.number)
                at = f"at step {max(steps)} " if steps else ""
                self._progress(study, trial.number, "PRUNED", f"{at}({value})".strip())
                return "PRUNED"
            error = _error_text(value) if isinstance(value, BaseException) else \
                f"job status {ret.status}"
            if isinstance(value, BaseException):
                log.warning("trial %d failed:\n%s", trial.number, "".join(
                    traceback.format_exception(type(value), value, value.__traceback__)))
            self._tell_fail(study, trial, error, job_dir)
            self._progress(study, trial.number, "FAIL", error)
            return "FAIL"
        try:
            result = _Result.of(value)
            values = [result.get(name) for name in self.objective_names]
            measured = [(c, result.get(c.metric)) for c in self.constraints]
        except _Rejected as err:
            self._tell_fail(study, trial, f"ValueError: {err}", job_dir)
            self._progress(study, trial.number, "FAIL", f"ValueError: {err}")
            return "FAIL"
        feasible = all(c.violation(v) <= 0 for c, v in measured)
        attrs: Dict[str, Any] = {"final_stage": result.final_stage, **result.final_metrics()}
        for constraint, measured_value in measured:
            attrs[constraint.metric] = measured_value
            attrs[f"{'max' if constraint.upper else 'min'}/{constraint.metric}"] = constraint.bound
        if self.constraints:
            attrs["feasible"] = feasible
        for key in ("mlflow_run_id", "run_id"):
            if result.extra.get(key):
                attrs["mlflow_run_id"] = str(result.extra[key])
        if job_dir:
            attrs["job_dir"] = job_dir
        try:
            for constraint, measured_value in measured:
                trial.set_constraint(constraint.key, constraint.violation(measured_value))
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)
        except Exception as err:  # failed meanwhile as stale by another process
            log.warning("trial %d: could not record its results: %s", trial.number, err)
        study.tell(trial, values=values, state=TrialState.COMPLETE, skip_if_finished=True)
        shown = self._values_text(values)
        if measured:
            shown += " | " + ", ".join(c.describe(v) for c, v in measured)
            shown += f" | feasible {'yes' if feasible else 'NO'}"
        self._progress(study, trial.number, "COMPLETE", shown)
        return "COMPLETE"

    def _values_text(self, values: Sequence[float]) -> str:
        return "  ".join(f"{name}={_fmt(value)}"
                         for name, value in zip(self.objective_names, values, strict=True))

    @staticmethod
    def _job_dir(ret: Any) -> Optional[str]:
        hydra_cfg = getattr(ret, "hydra_cfg", None)
        output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=None) \
            if hydra_cfg is not None else None
        return str(output_dir) if output_dir else getattr(ret, "working_dir", None)

    def _best_line(self, study: Any) -> str:
        """Best feasible trial (single objective) or size of the feasible Pareto front."""
        try:
            if len(self.directions) == 1:
                best = study.best_trial
                return f"best feasible: #{best.number} {self.objective_names[0]}=" \
                       f"{_fmt(best.value)}"
            return f"feasible Pareto front: {len(study.best_trials)} trial(s)"
        except ValueError:
            return "best feasible: none yet"

    def _progress(self, study: Any, number: int, state: str, detail: str) -> None:
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        print(f"[optuna] trial {number} {state}  {detail} | {self._best_line(study)} "
              f"({self._n_done(study)}/{self.n_trials})", flush=True)

    # ------------------------------------------------------------------ results

    def _solution(self, trial: Any, space: SearchSpace) -> Dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            return value

        return {
            "number": trial.number,
            "values": dict(zip(self.objective_names, map(plain, trial.values), strict=True)),
            "params": {k: plain(v) for k, v in trial.params.items()},
            "overrides": space.overrides(trial.params)[len(space.fixed):],
            "user_attrs": {k: plain(v) for k, v in trial.user_attrs.items()},
        }

    def _finish(self, study: Any, study_name: str, space: SearchSpace) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
        results: Dict[str, Any] = {
            "name": "optuna",
            "study_name": study_name,
            "storage": self.storage_used,
            "directions": self.directions,
            "objectives": self.objective_names,
            "constraints": self.constraints_cfg or [],
            "n_trials": self.n_trials,
            "trials": {k: v for k, v in counts.items() if v},
            "feasible_trials": len(feasible),
        }
        best: List[Any] = []
        if len(self.directions) == 1:
            try:
                best = [study.best_trial]
            except ValueError:
                best = []
            solution = self._solution(best[0], space) if best else None
            results["best_feasible"] = solution
            # The keys hydra-optuna-sweeper writes, for tools that read them.
            results["best_params"] = solution["params"] if solution else None
            results["best_value"] = solution["values"][self.objective_names[0]] \
                if solution else None
        else:
            best = sorted(study.best_trials, key=lambda t: t.number)
            results["solutions"] = [self._solution(t, space) for t in best]
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        _atomic_write(self.sweep_dir / "optimization_results.yaml", text)
        files = [self.sweep_dir / "optimization_results.yaml"]

        csv = self.sweep_dir / "trials.csv"
        tmp = csv.with_name(f".{csv.name}.tmp")
        study.trials_dataframe().to_csv(tmp, index=False)
        os.replace(tmp, csv)
        files.append(csv)
        if self.plots:
            files += self._plots(study, len(complete))

        print(f"[optuna] {study_name}: {results['trials']}, {len(feasible)} feasible", flush=True)
        if len(self.directions) == 1:
            print(f"[optuna] {self._best_line(study)}" + (
                f"  {' '.join(space.overrides(best[0].params)[len(space.fixed):])}"
                if best else ""), flush=True)
        else:
            for trial in best:
                print(f"[optuna] Pareto #{trial.number}: {self._values_text(trial.values)}  "
                      + " ".join(space.overrides(trial.params)[len(space.fixed):]), flush=True)
        print(f"[optuna] results: {self.sweep_dir / 'optimization_results.yaml'}", flush=True)
        self._mlflow_results(results, best, files, len(feasible))

    def _plots(self, study: Any, n_complete: int) -> List[Path]:
        """Optuna's matplotlib plots as PNG; a plot that fails only costs a warning."""
        if n_complete == 0:
            return []
        try:
            import matplotlib

            matplotlib.use("Agg", force=True)
            import matplotlib.pyplot as plt
            from optuna.visualization import matplotlib as ovm
        except Exception as err:
            log.warning("no plots: %s", _error_text(err))
            return []

        def slug(name: str) -> str:
            return name.replace("/", "_")

        jobs: List[Tuple[str, Any]] = []
        multi = len(self.directions) > 1
        for i, name in enumerate(self.objective_names):
            suffix = f"_{slug(name)}" if multi else ""
            target = (lambda t, i=i: t.values[i]) if multi else None
            jobs.append((f"optimization_history{suffix}.png", lambda target=target, name=name:
                         ovm.plot_optimization_history(study, target=target, target_name=name)))
            if n_complete >= 2:
                jobs.append((f"param_importances{suffix}.png", lambda target=target, name=name:
                             ovm.plot_param_importances(study, target=target, target_name=name)))
        if len(self.directions) in (2, 3):
            jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(
                study, target_names=self.objective_names)))
        saved = []
        for filename, draw in jobs:
            path = self.sweep_dir / filename
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's matplotlib API is experimental
                    ax = draw()
                figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                figure.tight_layout()
                tmp = path.with_name(f".{path.name}.tmp")
                figure.savefig(tmp, format="png", dpi=110)
                os.replace(tmp, path)
                saved.append(path)
            except Exception as err:
                log.warning("plot %s skipped: %s", filename, _error_text(err))
            finally:
                plt.close("all")
        return saved

    # ------------------------------------------------------------------ MLflow

    def _tracking(self) -> Any:
        """tinyexp.tracking when the config logs to MLflow, else None."""
        if OmegaConf.select(self.config, "logger.name", default=None) != "mlflow":
            return None
        try:
            from tinyexp import tracking
        except ImportError as err:
            log.warning("no MLflow logging: %s", err)
            return None
        return tracking

    def _mlflow_parent(self, study: Any, study_name: str) -> None:
        """Create the study's parent run up front (its jobs find it through the sweep folder)."""
        tracking = self._tracking()
        if tracking is None:
            return
        try:
            self.parent_run_id = tracking.sweep_parent_run(self.config, self.sweep_dir,
                                                           f"optuna {study_name}")
        except Exception as err:
            log.warning("MLflow parent run: %s", _error_text(err))
            return
        if self.parent_run_id:
            study.set_user_attr("tinyexp.mlflow_parent_run_id", self.parent_run_id)

    def _mlflow_results(self, results: Dict[str, Any], best: List[Any], files: List[Path],
                        n_feasible: int) -> None:
        tracking = self._tracking()
        if tracking is None or not self.parent_run_id:
            return
        metrics: Dict[str, float] = {f"optuna/n_{k}": float(v)
                                     for k, v in results["trials"].items()}
        metrics["optuna/n_feasible"] = float(n_feasible)
        tags = {"tinyexp.optuna.study": results["study_name"],
                "tinyexp.optuna.storage": results["storage"]}
        if len(self.directions) == 1 and best:
            trial = best[0]
            metrics["optuna/best_trial"] = float(trial.number)
            metrics.update({f"optuna/best/{n}": float(v)
                            for n, v in zip(self.objective_names, trial.values, strict=True)})
            tags["tinyexp.optuna.best_trial"] = str(trial.number)
            # Tags, not params: a resumed study may find a better trial, and MLflow params are
            # write-once.
            tags.update({f"tinyexp.optuna.best.{k}": str(v) for k, v in trial.params.items()})
        elif best:
            metrics["optuna/pareto_size"] = float(len(best))
            tags["tinyexp.optuna.pareto_trials"] = ",".join(str(t.number) for t in best)
        params = {"optuna.directions": ",".join(self.directions),
                  "optuna.objectives": ",".join(self.objective_names),
                  "optuna.constraints": ", ".join(
                      f"{c.metric}{'<=' if c.upper else '>='}{c.bound:g}"
                      for c in self.constraints) or "none",
                  "optuna.sampler": str((self.sampler_cfg or {}).get("_target_")),
                  "optuna.pruner": str((self.pruner_cfg or {}).get("_target_"))}
        for what, kwargs in (("results", {"metrics": metrics, "tags": tags}),
                             ("params", {"params": params}),
                             ("files", {"artifacts": files})):
            try:
                tracking.log_to_run(self.config, self.parent_run_id, **kwargs)
            except Exception as err:  # the search itself is done and saved
                log.warning("MLflow %s on the parent run: %s", what, _error_text(err))
