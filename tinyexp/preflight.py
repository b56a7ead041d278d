"""Preflight: build the optimizer, the callbacks and the Trainer of a config once, before a run.

:func:`tinyexp.config.validate` checks what the standard library can. The rest only torch and
Lightning know: whether the Trainer takes ``trainer.precision=16-mixed`` here, whether the
optimizer takes ``betas=[1.5,0.9]``, whether a GPU exists. ``preflight`` checks each node's keys
against the signature of the class its ``_target_`` names, then builds it as the run will (the
Trainer through :func:`tinyexp.lit.build_trainer`, with the configured callbacks; the optimizer
on a dummy parameter), and turns what the libraries raise into a ``ConfigError`` naming the key.
It costs a few milliseconds and leaves torch's global flags as it found them.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from tinyexp.config import TINYEXP_TRAINER_KEYS, check_metric_callback
from tinyexp.lit import MONITORABLE, TRAIN_LOSS_EPOCH, build_trainer
from tinyexp.schemas import SCHEMAS, ConfigError, _require

# Hydra's instantiation keys: not arguments of the class.
_HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# Accelerators that need a device this machine may lack: what it is, and whether torch sees one.
_DEVICES: dict[str, tuple[str, Callable[[], bool]]] = {
    "gpu": ("GPU", torch.cuda.is_available),
    "cuda": ("GPU", torch.cuda.is_available),
    "mps": ("Apple GPU (MPS)", torch.backends.mps.is_available),
}


def preflight(cfg: DictConfig) -> None:
    """Check ``cfg.optim``, every ``cfg.callbacks`` node and ``cfg.trainer`` by building them.

    Run it after :func:`tinyexp.config.validate` (it relies on that: the nodes exist, ``optim``
    is ``_partial_``, ``mode`` and ``patience`` are in range) and before the MLflow run exists.

    Raises:
        ConfigError: naming the first bad key (``trainer.accelerator``, ``optim.betas``,
            ``callbacks.early_stopping.monitor``) and what it allows.
    """
    with _torch_flags_kept(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run's own Trainer repeats Lightning's advice
        _check_optim(OmegaConf.to_container(cfg.optim, resolve=True))
        task = cfg.dataset.get("task") or SCHEMAS["dataset"][cfg.dataset.name].task
        callbacks = OmegaConf.to_container(cfg.get("callbacks") or OmegaConf.create({}),
                                           resolve=True)
        trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                   if k not in TINYEXP_TRAINER_KEYS}  # tinyexp's own (resume): not the Trainer's
        for name, values in callbacks.items():
            if values is not None:  # null: switched off
                _check_callback(f"callbacks.{name}", values, task, trainer)
        _check_trainer(trainer, callbacks)


def _check_optim(values: dict[str, Any]) -> None:
    cls = _class("optim._target_", values["_target_"], torch.optim.Optimizer,
                 "torch.optim.Optimizer", "torch.optim.Adam")
    _check_keys("optim", cls, values, {"params": "each training passes its network's parameters"})
    param = torch.nn.Parameter(torch.zeros(1))
    _build("optim", values, lambda v: instantiate(OmegaConf.create(v))([param]), cls.__name__)


def _check_callback(key: str, values: dict[str, Any], task: str,
                    trainer: dict[str, Any]) -> None:
    cls = _class(f"{key}._target_", values["_target_"], pl.Callback,
                 "pytorch_lightning.Callback", "pytorch_lightning.callbacks.EarlyStopping")
    _check_keys(key, cls, values)
    if issubclass(cls, EarlyStopping | ModelCheckpoint):
        check_metric_callback(key, values)  # validate knows these by name; this, subclasses too
        _check_monitor(key, values, task, trainer, optional=issubclass(cls, ModelCheckpoint))
    built = _build(key, values, lambda v: instantiate(OmegaConf.create(v)), cls.__name__)
    _require(isinstance(built, pl.Callback), key,
             f"builds a {type(built).__name__}, not a callback (drop _partial_)")


def _check_monitor(key: str, values: dict[str, Any], task: str, trainer: dict[str, Any],
                   optional: bool) -> None:
    """The metric an EarlyStopping or ModelCheckpoint watches is one tinyexp's training logs,
    there when the callback looks (``optional``: ModelCheckpoint without one keeps the last)."""
    monitor, allowed = values.get("monitor"), MONITORABLE[task]
    if monitor is None and optional:
        return
    _require(monitor in allowed, f"{key}.monitor", f"{monitor!r} is not logged by tinyexp's "
                                                   f"training; allowed for {task} data: "
                                                   f"{', '.join(allowed)}")
    flag = values.get("check_on_train_epoch_end", values.get("save_on_train_epoch_end"))
    # Lightning's default: at the end of the training epoch if validation runs once an epoch.
    at_epoch_end = flag if flag is not None else (
        trainer.get("val_check_interval") in (None, 1.0)
        and trainer.get("check_val_every_n_epoch", 1) == 1)
    _require(monitor != TRAIN_LOSS_EPOCH or at_epoch_end, f"{key}.monitor",
             f"{monitor!r} exists only once a training epoch ends, but this callback looks "
             f"after validation (check_on_train_epoch_end/save_on_train_epoch_end false, or "
             f"validation not once an epoch): monitor train/loss or val/loss")


def _check_trainer(values: dict[str, Any], callbacks: dict[str, Any]) -> None:
    cls = _class("trainer._target_", values["_target_"], pl.Trainer, "pytorch_lightning.Trainer",
                 "pytorch_lightning.Trainer")
    _check_keys("trainer", cls, values,
                {"callbacks": "configure them under the top-level `callbacks` node"})
    accelerator = values.get("accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in _DEVICES:
        device, available = _DEVICES[accelerator.lower()]
        _require(available(), "trainer.accelerator",
                 f"{accelerator!r} but no {device} is available here; allowed: "
                 f"{', '.join(_accelerators())}")

    def build(trainer: dict[str, Any], chosen: dict[str, Any] = callbacks) -> pl.Trainer:
        return build_trainer(OmegaConf.create({"trainer": trainer, "callbacks": chosen}))

    try:
        _build("trainer", values, build, "pytorch_lightning.Trainer")
    except ConfigError as err:
        if err.key != "trainer":
            raise
        # No Trainer key is to blame: one callback may be, with another (two EarlyStopping
        # watching one metric the same way share a state key).
        culprit = next((name for name in callbacks if _builds(lambda v, n=name: build(
            v, {k: c for k, c in callbacks.items() if k != n}), values)), None)
        if culprit is None:
            raise
        raise ConfigError(f"callbacks.{culprit}", str(err).split(": ", 1)[1]) from None


def _accelerators() -> list[str]:
    """The accelerators this machine can run: cpu, auto and those whose device torch sees."""
    found = [name for name, (_, available) in _DEVICES.items() if available()]
    return ["cpu", "auto", *found]


def _class(key: str, target: Any, base: type, base_name: str, example: str) -> type:
    """The class ``target`` names; a subclass of ``base`` or ``ConfigError`` on ``key``."""
    module, _, attr = str(target).rpartition(".")
    hint = ("use the pytorch_lightning.* namespace, as tinyexp's Trainer does"
            if str(target).startswith("lightning.") else f"e.g. {example}")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(key, f"cannot import {target!r} ({_first_line(err)}); {hint}") from None
    _require(isinstance(cls, type) and issubclass(cls, base), key,
             f"{target!r} is not a {base_name}; {hint}")
    return cls


def _check_keys(key: str, cls: type, values: dict[str, Any],
                reserved: dict[str, str] | None = None) -> None:
    """Every key of ``values`` an argument of ``cls`` (``reserved`` ones are tinyexp's), and
    every argument without a default given."""
    reserved = reserved or {}
    params = inspect.signature(cls).parameters
    free = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    named = [n for n, p in params.items() if p.kind not in free and n not in reserved]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in values:
        if name in _HYDRA_KEYS:
            continue
        _require(name not in reserved, f"{key}.{name}",
                 f"is set by tinyexp: {reserved.get(name)}")
        close = difflib.get_close_matches(name, named, n=1)
        _require(takes_any or name in named, f"{key}.{name}",
                 f"not an argument of {cls.__qualname__}"
                 f"{f' (did you mean {close[0]!r}?)' if close else ''}; "
                 f"allowed: {', '.join(named)}")
    for name in named:
        required = params[name].default is inspect.Parameter.empty
        _require(not required or name in values, f"{key}.{name}",
                 f"is required by {cls.__qualname__}: set it")


def _build(key: str, values: dict[str, Any], build: Callable[[dict[str, Any]], Any],
           label: str) -> Any:
    """``build(values)``, or ``ConfigError`` naming the key whose removal makes it succeed."""
    try:
        return build(values)
    except Exception as err:  # whatever the library raises, the config asked for it
        reason = _first_line(_root(err))
    culprit = next((name for name in values if name not in _HYDRA_KEYS
                    and _builds(build, {k: v for k, v in values.items() if k != name})), None)
    raise ConfigError(f"{key}.{culprit}" if culprit else key, f"{label} refuses it: {reason}")


def _builds(build: Callable[[dict[str, Any]], Any], values: dict[str, Any]) -> bool:
    try:
        build(values)
    except Exception:
        return False
    return True


def _root(err: BaseException) -> BaseException:
    """The library's own exception, not Hydra's wrapper around it."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@contextlib.contextmanager
def _torch_flags_kept() -> Iterator[None]:
    """Trainer(deterministic=True) switches torch's deterministic algorithms on for the whole
    process; the run's Trainer will do so itself, the preflight leaves them as it found them."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
