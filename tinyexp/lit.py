"""Lightning wrappers around plain networks, and the one training loop every stage uses.

Compression touches only the ``nn.Module``; the LightningModule is rebuilt around it before each
training (baseline, fine-tuning after each pruning step), so no stage depends on another's
optimizer state.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

# Lightning's banner lines ("GPU available: False ...") and its advice about dataloader workers
# say nothing useful for small CPU runs whose data already sits in memory.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("pytorch_lightning.accelerators.cuda").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*The number of training batches.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")


# The epoch mean of the training loss, for the loss curves. ``train/loss`` itself stays the
# last step's value (logging it on_epoch would turn it into the mean at epoch end, and change
# what EarlyStopping(monitor=train/loss) compares).
TRAIN_LOSS_EPOCH = "train/loss_epoch"
VAL_LOSS = "val/loss"  # logged per batch, reduced by Lightning to the epoch mean


class ReconstructionTask(pl.LightningModule):
    """Autoencoder training: mean squared reconstruction error of the window."""

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer]) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = optimizer

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.net(x), x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log(TRAIN_LOSS_EPOCH, loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log(VAL_LOSS, self._loss(batch), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.net.parameters())


class ClassificationTask(pl.LightningModule):
    """Classifier training: cross-entropy, with validation accuracy for the progress bar."""

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer]) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log(TRAIN_LOSS_EPOCH, loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log(VAL_LOSS, F.cross_entropy(logits, y), prog_bar=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.net.parameters())


TASKS: dict[str, type[pl.LightningModule]] = {
    "anomaly": ReconstructionTask,
    "classification": ClassificationTask,
}


class RestoreBest(pl.Callback):
    """Keep the weights of the best validation epoch and load them back when training ends.

    Early stopping stops *after* the patience ran out; the weights to measure are the best ones.
    """

    def __init__(self, monitor: str = VAL_LOSS) -> None:
        self.monitor = monitor
        self.best = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.state = copy.deepcopy(module.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


EpochHook = Callable[[int, dict[str, float]], Any]


@contextmanager
def _rng_untouched() -> Iterator[None]:
    """Restore the torch, NumPy and Python RNG states on exit: whatever runs inside (an MLflow
    request whose retries draw jitter from ``random``, say) cannot change the training."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _value(metric: torch.Tensor | None) -> float:
    return float(metric) if metric is not None else math.nan


class LossCurve(pl.Callback):
    """Record each epoch's mean training and validation loss as ``curve``; pass each epoch on.

    An epoch counts once it ends, after its validation (``on_train_epoch_end``), numbered from
    1: the last number equals ``trainer.current_epoch`` after ``fit``. An epoch without a
    validation gets ``val_loss`` NaN. A callback that stops training by raising inside an epoch
    (Optuna pruning, after that epoch's validation) leaves that epoch out: its training-loss
    mean is only computed at the epoch's end.
    """

    def __init__(self, on_epoch: EpochHook | None = None) -> None:
        self.on_epoch = on_epoch
        self.curve: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self._val_loss = math.nan

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_loss = _value(trainer.callback_metrics.get(VAL_LOSS))

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        values = {"train_loss": _value(trainer.callback_metrics.get(TRAIN_LOSS_EPOCH)),
                  "val_loss": self._val_loss}
        self._val_loss = math.nan
        for name, value in values.items():
            self.curve[name].append(value)
        if self.on_epoch is not None:
            with _rng_untouched():
                self.on_epoch(trainer.current_epoch + 1, dict(values))


def _progress_bar(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


def build_trainer(cfg: DictConfig, *, max_epochs: int | None = None,
                  callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured callbacks, then ``callbacks``."""
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    overrides: dict[str, Any] = {
        "callbacks": configured + list(callbacks or []),
        "enable_progress_bar": _progress_bar(cfg.trainer.get("enable_progress_bar")),
    }
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    return instantiate(cfg.trainer, **overrides)


def train(net: nn.Module, datamodule: pl.LightningDataModule, cfg: DictConfig, *,
          max_epochs: int | None = None, extra_callbacks: list[pl.Callback] | None = None,
          on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train ``net`` in place with the Trainer, optimizer and callbacks of ``cfg``.

    Args:
        net: the network to train; its best-validation weights are loaded back at the end.
        datamodule: provides ``train_dataloader``/``val_dataloader`` and ``task``.
        cfg: the full config (``trainer``, ``optim``, ``callbacks``, ``seed``).
        max_epochs: overrides ``trainer.max_epochs`` (fine-tuning).
        extra_callbacks: added to the configured ones (e.g. an Optuna pruning callback).
        on_epoch: called as ``on_epoch(epoch, {"train_loss": ..., "val_loss": ...})`` after
            each epoch's validation, epochs counted from 1 (a tracker's ``curve_logger``). The
            RNG states are restored after each call, so it cannot change the training.

    Returns:
        ``epochs``, ``best_val_loss``, ``train_seconds`` and ``curve``: the epoch means
        ``{"train_loss": [...], "val_loss": [...]}``, one value per epoch.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net.train()  # Lightning keeps the mode it finds; a measured (eval) net must train with dropout
    task = TASKS[datamodule.task](net, instantiate(cfg.optim))
    best, curve = RestoreBest(), LossCurve(on_epoch)
    trainer = build_trainer(cfg, max_epochs=max_epochs,
                            callbacks=[best, curve, *(extra_callbacks or [])])
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    net.eval()
    return {
        "epochs": int(trainer.current_epoch),  # epochs completed: the curve's length
        "best_val_loss": best.best,
        "train_seconds": time.perf_counter() - start,
        "curve": curve.curve,
    }
