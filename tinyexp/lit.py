"""Lightning wrappers around plain networks, and the one training loop every stage uses.

Compression touches only the ``nn.Module``; the LightningModule is rebuilt around it before each
training (baseline, fine-tuning after each pruning step), so no stage depends on another's
optimizer state.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

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
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True)

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
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
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

    def __init__(self, monitor: str = "val/loss") -> None:
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
          max_epochs: int | None = None,
          extra_callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train ``net`` in place with the Trainer, optimizer and callbacks of ``cfg``.

    Args:
        net: the network to train; its best-validation weights are loaded back at the end.
        datamodule: provides ``train_dataloader``/``val_dataloader`` and ``task``.
        cfg: the full config (``trainer``, ``optim``, ``callbacks``, ``seed``).
        max_epochs: overrides ``trainer.max_epochs`` (fine-tuning).
        extra_callbacks: added to the configured ones (e.g. an Optuna pruning callback).

    Returns:
        ``epochs``, ``best_val_loss`` and ``train_seconds``.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net.train()  # Lightning keeps the mode it finds; a measured (eval) net must train with dropout
    task = TASKS[datamodule.task](net, instantiate(cfg.optim))
    best = RestoreBest()
    trainer = build_trainer(cfg, max_epochs=max_epochs,
                            callbacks=[best, *(extra_callbacks or [])])
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    net.eval()
    return {
        "epochs": int(trainer.current_epoch),
        "best_val_loss": best.best,
        "train_seconds": time.perf_counter() - start,
    }
