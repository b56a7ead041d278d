"""Config validation: every bad value is caught here, before anything heavy runs.

The YAML files in ``conf/`` say what to build; the dataclasses in ``tinyexp.schemas`` (data,
architectures, logger, target, measure) and the stage spec classes of ``tinyexp.stages`` (named by
each stage's ``_target_``) say which keys each option takes, of which type, in which range.
``validate`` checks a composed config against them, and what only the environment knows (the
cache folder and the tracking store writable, the database driver installed), and raises
``ConfigError`` with one line naming the key and what is allowed. Only the standard library,
OmegaConf and the (stdlib-only) spec modules are imported here, so validation costs nothing at
startup. What needs torch or Lightning (the Trainer, optimizer and callbacks really built) is
``tinyexp.preflight``'s.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import math
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tinyexp.schemas import (
    SCHEMAS,
    SHARED_SCHEMAS,
    ConfigError,
    Finetune,
    Measure,
    MLflowLogger,
    _require,
)
from tinyexp.stages.base import Stage

# The task metrics each kind of dataset is measured by.
TASK_METRICS = {"anomaly": ("mse", "f1", "far", "mar", "roc_auc", "pr_auc"),
                "classification": ("accuracy", "recall", "f1")}
# The task metric a stage is judged by unless `objective` says otherwise.
PRIMARY_METRIC = {"anomaly": "f1", "classification": "accuracy"}
ALL_TASK_METRICS = tuple(dict.fromkeys(m for names in TASK_METRICS.values() for m in names))
# Keys of a dataset/arch node that describe it rather than being constructor arguments.
META_KEYS = ("name", "task", "input", "threshold_quantile", "threshold_scale")

# The stage groups, in the order the pipeline runs them; each option's YAML names its spec class.
STAGE_GROUPS = ("analysis", "distill", "prune", "quant", "deploy")

# Trainer keys checked here; tinyexp.preflight checks the rest against the Trainer itself.
_TRAINER_INTS = {"max_epochs": 1, "log_every_n_steps": 1, "accumulate_grad_batches": 1,
                 "check_val_every_n_epoch": 1}
# A count of batches (int >= 1) or a share of them (float in (0, 1]).
_TRAINER_SHARES = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                   "limit_predict_batches", "val_check_interval")
# Keys of the trainer node that are tinyexp's, not the Trainer's (taken out before building it).
TINYEXP_TRAINER_KEYS = ("resume",)
# trainer.resume: auto: the baseline's training checkpoints every epoch (under cache_dir) and a
# rerun of the same config resumes from the last one; never: no checkpoints, always from scratch.
RESUME_MODES = ("auto", "never")
# Callbacks that watch a logged metric; tinyexp.preflight checks their monitor (and subclasses).
METRIC_CALLBACKS = ("EarlyStopping", "ModelCheckpoint")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(key: str, value: Any) -> None:
    """Every float in ``value`` (nested dicts and lists) finite: NaN or inf is no setting."""
    if isinstance(value, dict):
        for name, item in value.items():
            _finite(f"{key}.{name}", item)
    elif isinstance(value, list | tuple):
        for item in value:
            _finite(key, item)
    elif isinstance(value, float):
        _require(math.isfinite(value), key, f"must be a finite number, got {value}")


def _merge(group: str, name: Any, schema: type, values: dict[str, Any]) -> Any:
    """``values`` typed and range-checked by the dataclass ``schema``: an instance of it."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        _finite(group, OmegaConf.to_container(merged))  # before __post_init__ compares them
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        key = f"{group}.{err.full_key}" if getattr(err, "full_key", None) else group
        first_line = str(err).splitlines()[0]
        if "not in" in first_line:  # unknown key
            allowed = ", ".join(f.name for f in dataclasses.fields(schema))
            raise ConfigError(key, f"unknown key for {group}={name}; allowed: {allowed}") from None
        raise ConfigError(key, first_line) from None


def _check_node(group: str, node: Any) -> Any:
    """Type-check ``node`` against the schema of its option and run the range checks."""
    _require(isinstance(node, DictConfig), group, "must be a config group option")
    name = node.get("name")
    options = SCHEMAS.get(group) or {name: SHARED_SCHEMAS[group]}
    _require(name in options, f"{group}.name",
             f"unknown option {name!r}; allowed: {', '.join(options)}")
    # Resolve against the whole config first: `${seed}` means the top-level seed.
    return _merge(group, name, options[name], OmegaConf.to_container(node, resolve=True))


def stage_class(group: str, target: Any) -> type[Stage]:
    """The spec class a stage's ``_target_`` names (a dataclass deriving from ``Stage``)."""
    key = f"{group}._target_"
    _require(isinstance(target, str) and "." in target, key,
             f"must name the stage's spec class, e.g. tinyexp.stages.prune.L1Prune, "
             f"got {target!r}")
    module, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(key, f"cannot import {target!r} ({err})") from None
    _require(isinstance(cls, type) and issubclass(cls, Stage) and dataclasses.is_dataclass(cls),
             key, f"{target!r} is not a stage spec class (a dataclass deriving from "
                  f"tinyexp.stages.base.Stage)")
    return cls


def check_stage(group: str, node: Any) -> Stage | None:
    """The spec object of a stage group's option, or None when the group is null (none)."""
    if node is None:
        return None
    _require(isinstance(node, DictConfig) and "_target_" in node, group,
             "must be a stage option with a _target_ spec class, or null")
    values = OmegaConf.to_container(node, resolve=True)
    cls = stage_class(group, values.pop("_target_"))
    return _merge(group, values.get("name"), cls, values)


def _check_trainer(node: Any) -> None:
    _require(isinstance(node, DictConfig) and "_target_" in node, "trainer",
             "must be a pytorch_lightning.Trainer config with _target_")
    values = OmegaConf.to_container(node, resolve=True)
    _finite("trainer", values)
    _require("callbacks" not in values, "trainer.callbacks",
             "tinyexp hands the Trainer its callbacks: configure them under the top-level "
             "`callbacks` node (callbacks.<name>._target_=...)")
    for key, low in _TRAINER_INTS.items():
        value = values.get(key)
        _require(value is None or (_is_int(value) and value >= low), f"trainer.{key}",
                 f"must be an int >= {low}, got {value!r}")
    for key in _TRAINER_SHARES:
        value = values.get(key)
        _require(value is None or (_is_int(value) and value >= 1)
                 or (isinstance(value, float) and 0 < value <= 1), f"trainer.{key}",
                 f"must be an int >= 1 (batches) or a float in (0, 1] (a share of them), got "
                 f"{value!r}" + ("; 0 would train or validate nothing" if value == 0 else ""))
    steps = values.get("max_steps")
    _require(steps in (None, -1) or (_is_int(steps) and steps >= 1), "trainer.max_steps",
             f"must be -1 (no limit: trainer.max_epochs decides) or an int >= 1, got {steps!r}")
    clip = values.get("gradient_clip_val")
    _require(clip is None or (isinstance(clip, int | float) and not isinstance(clip, bool)
                              and clip >= 0), "trainer.gradient_clip_val",
             f"must be null or a number >= 0 (0: no clipping), got {clip!r}")
    bar = values.get("enable_progress_bar")
    _require(bar is None or isinstance(bar, bool), "trainer.enable_progress_bar",
             f"must be true, false or null, got {bar!r}")
    resume = values.get("resume", "auto")
    _require(isinstance(resume, str) and resume in RESUME_MODES, "trainer.resume",
             f"must be one of {', '.join(RESUME_MODES)}, got {resume!r}")


def _check_optim(node: Any) -> None:
    _require(isinstance(node, DictConfig) and isinstance(node.get("_target_"), str), "optim",
             "must be an optimizer config: _target_ (e.g. torch.optim.Adam), _partial_: true, lr")
    values = OmegaConf.to_container(node, resolve=True)
    _finite("optim", values)
    _require(values.get("_partial_") is True, "optim._partial_",
             f"must be true: each training hands the optimizer its network's parameters, got "
             f"{values.get('_partial_')!r}")
    lr = values.get("lr")
    _require(isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0, "optim.lr",
             f"must be a number > 0, got {lr!r}")


def check_metric_callback(key: str, values: dict[str, Any]) -> None:
    """``mode`` and ``patience`` of a callback that watches a metric (``key``: its node)."""
    mode = values.get("mode", "min")
    _require(mode in ("min", "max"), f"{key}.mode",
             f"must be min or max (whether the monitored metric should fall or rise), "
             f"got {mode!r}")
    patience = values.get("patience", 0)
    _require(_is_int(patience) and patience >= 0, f"{key}.patience",
             f"must be an int >= 0 (checks without improvement before stopping), "
             f"got {patience!r}")


def _check_callbacks(node: Any) -> None:
    if node is None:
        return
    _require(isinstance(node, DictConfig), "callbacks",
             "must be a map of callbacks (callbacks.<name>._target_=...), or null for none")
    for name, callback in node.items():
        key = f"callbacks.{name}"
        if callback is None:  # switched off: callbacks.early_stopping=null
            continue
        _require(isinstance(callback, DictConfig) and isinstance(callback.get("_target_"), str),
                 key, "must be a callback config with a _target_ (e.g. "
                      "pytorch_lightning.callbacks.EarlyStopping), or null to switch it off")
        values = OmegaConf.to_container(callback, resolve=True)
        _finite(key, values)
        if values["_target_"].rpartition(".")[2] in METRIC_CALLBACKS:
            check_metric_callback(key, values)


def writable_folder(key: str, path: str | Path) -> None:
    """Create the folder ``path`` if needed and write a file in it, or raise ``ConfigError``:
    the cheap probe that spares a run which would fail only when it writes there."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".tinyexp-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(key, f"cannot write to {str(path)!r} ({type(err).__name__}: "
                               f"{err.strerror or err})") from None


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check a composed tinyexp config; return the typed option objects by group.

    Raises:
        ConfigError: naming the first bad key and what it allows.
    """
    # A sweeper hands over the config with Hydra's own node, whose job fields are not set yet.
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    missing = sorted(OmegaConf.missing_keys(cfg))
    _require(not missing, missing[0] if missing else "", "is required (no default): set it "
             "on the command line, e.g. dataset.data_dir=/path/to/SKAB")
    seed = cfg.get("seed")
    _require(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed",
             f"must be an int >= 0, got {seed!r}")
    specs = {group: _check_node(group, cfg.get(group)) for group in [*SCHEMAS, *SHARED_SCHEMAS]}
    specs.update({group: check_stage(group, cfg.get(group)) for group in STAGE_GROUPS})
    for group in STAGE_GROUPS:
        if specs[group] is not None:
            specs[group].check_ready()
    _check_trainer(cfg.get("trainer"))
    _check_optim(cfg.get("optim"))
    _check_callbacks(cfg.get("callbacks"))
    for key, schema in (("measure", Measure), ("finetune", Finetune)):
        specs[key] = _merge(key, key, schema, OmegaConf.to_container(
            cfg.get(key) or OmegaConf.create({}), resolve=True))
    repeats = cfg.get("repeats", 1)
    _require(_is_int(repeats) and repeats >= 1,
             "repeats", f"must be an int >= 1 (seeds seed..seed+repeats-1), got {repeats!r}")

    data, arch = specs["dataset"], specs["arch"]
    _require(data.input == arch.input, "arch",
             f"arch={arch.name} takes {arch.input} data but dataset={data.name} is {data.input} "
             f"data; choose an architecture that takes {data.input} data")
    objective = cfg.get("objective")
    _require(objective is None or objective in TASK_METRICS[data.task], "objective",
             f"must be null (the task's default: {PRIMARY_METRIC[data.task]}) or one of "
             f"{', '.join(TASK_METRICS[data.task])} for dataset={data.name}, got {objective!r}")
    analysis = specs["analysis"]
    if analysis is not None and getattr(analysis, "metric", None) is not None:
        allowed = TASK_METRICS[data.task]
        _require(analysis.metric in allowed, "analysis.metric",
                 f"must be one of {', '.join(allowed)} for dataset={data.name}, "
                 f"got {analysis.metric!r}")
    if arch.name == "cnn":
        factor = 2 ** len(arch.channels)
        _require(data.window % factor == 0, "dataset.window",
                 f"must be a multiple of {factor} for arch=cnn with {len(arch.channels)} "
                 f"stride-2 layers, got {data.window}")
    if hasattr(data, "image_shape") and hasattr(arch, "check_input"):
        arch.check_input(data.image_shape())  # the input is large enough for its downsampling
    # Last: the checks that touch the file system.
    if isinstance(specs["logger"], MLflowLogger):
        check_tracking_uri("logger.tracking_uri", specs["logger"].tracking_uri)
    cache_dir = cfg.get("cache_dir")
    _require(isinstance(cache_dir, str) and bool(cache_dir.strip()), "cache_dir",
             f"must be the folder of the trained baselines (e.g. .tinyexp_cache), "
             f"got {cache_dir!r}")
    writable_folder("cache_dir", cache_dir)
    return specs


def option_name(cfg: Any, group: str) -> str:
    """The option a group holds (``l1``, ``int8``), ``none`` for a null stage group."""
    node = cfg.get(group)
    return "none" if node is None else str(node.get("name"))


def describe(cfg: Any) -> str:
    """A run name that says what it is: ``sensors-cnn-l1@0.5-int8``, ``...-qat-w4a8``,
    ``...-l1@0.5-none-kd`` with distillation, ``...-int8-tflm`` deployed."""
    labels = []
    for group in ("prune", "quant"):
        node = cfg.get(group)
        if node is None or "_target_" not in node:  # off, or a job config older than the specs
            labels.append(option_name(cfg, group))
        else:
            labels.append(check_stage(group, node).label())
    for group in ("distill", "deploy"):  # another model (distilled) or measure (deployed)
        if cfg.get(group) is not None:
            labels.append(check_stage(group, cfg[group]).label())
    return "-".join([cfg.dataset.name, cfg.arch.name, *labels])


def constructor_kwargs(node: DictConfig) -> DictConfig:
    """The node without its descriptive keys, ready for ``hydra.utils.instantiate``."""
    return OmegaConf.create(
        {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in META_KEYS}
    )


# --------------------------------------------------------------------- the MLflow tracking store

# SQLAlchemy's synchronous drivers of the databases MLflow keeps runs in (the module each
# imports); the first is what a URL without `+driver` uses.
DB_DRIVERS = {
    "sqlite": {"pysqlite": "sqlite3"},
    "postgresql": {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000",
                   "psycopg2cffi": "psycopg2cffi"},
    "mysql": {"mysqldb": "MySQLdb", "pymysql": "pymysql", "mysqlconnector": "mysql.connector",
              "mariadbconnector": "mariadb", "cymysql": "cymysql", "pyodbc": "pyodbc"},
    "mssql": {"pyodbc": "pyodbc", "pymssql": "pymssql"},
}
# MLflow 3.17's other tracking stores (mlflow.tracking._tracking_service.utils); plugins add more.
_SCHEMES = "a path, file, sqlite, postgresql, mysql, mssql (each +driver), http, https, databricks"
_DATABRICKS = ("databricks", "databricks-uc", "uc")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # `mysql.connector` without `mysql`
        return False


def _entry_points(group: str) -> set[str]:
    return {entry.name for entry in importlib.metadata.entry_points(group=group)}


def check_tracking_uri(key: str, uri: str | None) -> None:
    """An MLflow tracking URI as MLflow reads it, without importing MLflow: a scheme it has a
    store for, the database driver installed, a local store's folder writable. None stands for
    ``MLFLOW_TRACKING_URI`` if set (as in tinyexp.tracking), else MLflow's default (fine)."""
    source = ""
    if uri is None:
        uri, source = os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI="
        if not uri:
            return
    shown = f"{source}{uri!r}"
    _require(isinstance(uri, str) and bool(uri.strip()), key,
             f"must be an MLflow tracking URI (sqlite:///mlflow.db, http://host:5000, ...) or "
             f"null (MLFLOW_TRACKING_URI, else MLflow's default), got {shown}")
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    dialect, _, driver = scheme.partition("+")
    if uri in _DATABRICKS or scheme in _DATABRICKS:
        return
    if dialect in DB_DRIVERS:
        _check_database(key, shown, uri, dialect, driver)
    elif scheme in ("http", "https"):
        _require(bool(parsed.netloc), key, f"{shown} names no server, e.g. http://host:5000")
    elif scheme in ("", "file"):
        writable_folder(key, parsed.path or uri)
    else:
        plugins = sorted(_entry_points("mlflow.tracking_store"))
        _require(scheme in plugins, key, f"{shown}: MLflow has no tracking store for scheme "
                                         f"{scheme!r}; allowed: {', '.join([_SCHEMES, *plugins])}")


def _check_database(key: str, shown: str, uri: str, dialect: str, driver: str) -> None:
    drivers = DB_DRIVERS[dialect]
    _require("+" not in driver, key, f"{shown}: one +driver at most")
    _require(_installed("sqlalchemy"), key, f"{shown}: a database store needs SQLAlchemy, "
                                            f"which is not installed here")
    driver = driver or next(iter(drivers))
    module = drivers.get(driver)
    if module is None:  # a third-party SQLAlchemy dialect registers an entry point
        _require(f"{dialect}.{driver}" in _entry_points("sqlalchemy.dialects"), key,
                 f"{shown}: unknown or asynchronous {dialect} driver {driver!r}; allowed: "
                 f"{', '.join(drivers)}")
    else:
        there = [f"{dialect}+{name}" for name, mod in drivers.items() if _installed(mod)]
        _require(_installed(module), key,
                 f"{shown} needs the {driver} driver (Python module {module}), which is not "
                 f"installed here: install it" + (f", or use {', '.join(there)}" if there else ""))
    if dialect == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
        path = uri.split("://", 1)[1].split("?", 1)[0].removeprefix("/")
        if path not in ("", ":memory:"):
            writable_folder(key, Path(path).parent)
