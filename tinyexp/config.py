"""Config validation: every bad value is caught here, before anything heavy runs.

The YAML files in ``conf/`` say what to build; the dataclasses in ``tinyexp.schemas`` (data,
architectures, logger, target, measure) and the stage spec classes of ``tinyexp.stages`` (named by
each stage's ``_target_``) say which keys each option takes, of which type, in which range.
``validate`` checks a composed config against them and raises ``ConfigError`` with one line
naming the key and what is allowed. Only the standard library, OmegaConf and the (stdlib-only)
spec modules are imported here, so validation costs nothing at startup.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tinyexp.schemas import SCHEMAS, SHARED_SCHEMAS, ConfigError, Finetune, Measure, _require
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

# Trainer keys we check; any other pytorch_lightning.Trainer keyword passes through untouched.
_TRAINER_INTS = {"max_epochs": 1, "devices": 1, "log_every_n_steps": 1}


def _merge(group: str, name: Any, schema: type, values: dict[str, Any]) -> Any:
    """``values`` typed and range-checked by the dataclass ``schema``: an instance of it."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
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
    for key, low in _TRAINER_INTS.items():
        if key in node and node[key] is not None:
            value = node[key]
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                     f"trainer.{key}", f"must be an int >= {low}, got {value!r}")
    bar = node.get("enable_progress_bar")
    _require(bar is None or isinstance(bar, bool), "trainer.enable_progress_bar",
             f"must be true, false or null, got {bar!r}")


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
    for key, schema in (("measure", Measure), ("finetune", Finetune)):
        specs[key] = _merge(key, key, schema, OmegaConf.to_container(
            cfg.get(key) or OmegaConf.create({}), resolve=True))
    repeats = cfg.get("repeats", 1)
    _require(isinstance(repeats, int) and not isinstance(repeats, bool) and repeats >= 1,
             "repeats", f"must be an int >= 1 (seeds seed..seed+repeats-1), got {repeats!r}")
    lr = OmegaConf.select(cfg, "optim.lr")
    _require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
             and lr > 0, "optim.lr", f"must be a number > 0, got {lr!r}")

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
