"""Lightning wrappers around plain networks, and the one training loop every stage uses.

Compression touches only the ``nn.Module``; the LightningModule is rebuilt around it before each
training (baseline, fine-tuning after each pruning step), so no stage depends on another's
optimizer state.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from tinyexp.config import TINYEXP_TRAINER_KEYS
from tinyexp.epochs import (
    TRAIN_LOSS_EPOCH,
    VAL_LOSS,
    EpochCheckpoint,
    EpochHook,
    LossCurve,
    RestoreBest,
    last_checkpoint,
)

# Lightning's banner lines ("GPU available: False ...") and its advice about dataloader workers
# say nothing useful for small CPU runs whose data already sits in memory.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("pytorch_lightning.accelerators.cuda").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*The number of training batches.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")

log = logging.getLogger(__name__)


# TRAIN_LOSS_EPOCH, the epoch mean of the training loss for the curves, and VAL_LOSS, the
# validation loss, are tinyexp.epochs' (its callbacks read them).
TRAIN_LOSS = "train/loss"  # the last step's loss (what is minimised: with distillation, the mix)
VAL_ACC = "val/acc"  # classification only
KD_LOSS = "train/kd_loss"  # epoch mean of the distillation term (only when distilling)
# What a configured callback (EarlyStopping, ModelCheckpoint) can monitor: the metrics every
# training of a task logs (TRAIN_LOSS_EPOCH only once the training epoch ends). Not KD_LOSS:
# the baseline's training does not distil. tinyexp.preflight checks `monitor` against these.
MONITORABLE = {"anomaly": (TRAIN_LOSS, TRAIN_LOSS_EPOCH, VAL_LOSS),
               "classification": (TRAIN_LOSS, TRAIN_LOSS_EPOCH, VAL_LOSS, VAL_ACC)}
SCHEDULERS = ("none", "cosine", "onecycle")


class _Task(pl.LightningModule):
    """What both tasks share: the optimizer and its schedule, and distillation from a teacher.

    A subclass says how a batch splits into input and target, its task loss and its
    distillation loss. The training step minimises ``(1 - weight) * task + weight * kd`` with
    a teacher, the task loss without one; validation always logs the pure task loss as
    ``val/loss``, so early stopping and :class:`RestoreBest` compare the task, not the mix.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: str | None = None, teacher: nn.Module | None = None,
                 distill: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.net = net
        self.make_optimizer = optimizer
        self.scheduler = scheduler
        # In a tuple the teacher is no submodule: it stays out of state_dict() (RestoreBest
        # keeps the student's weights only), parameters() and Lightning's mode switching.
        self._teacher = (teacher,) if teacher is not None else ()
        self.temperature = float(distill["temperature"]) if distill else 1.0
        self.kd_weight = float(distill["weight"]) if distill else 0.0

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def split(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)`` of a batch."""
        raise NotImplementedError

    def task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kd_loss(self, out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loss to minimise, task loss, distillation loss or None)`` of a training batch."""
        x, target = self.split(batch)
        out = self.net(x)
        task = self.task_loss(out, target)
        if self.teacher is None:
            return task, task, None
        with torch.no_grad():
            teacher_out = self.teacher(x)
        kd = self.kd_loss(out, teacher_out)
        return (1 - self.kd_weight) * task + self.kd_weight * kd, task, kd

    def on_fit_start(self) -> None:
        if self.teacher is not None:  # not a submodule, so Lightning does not move it
            self.teacher.to(self.device)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, task, kd = self.losses(batch)
        self.log(TRAIN_LOSS, loss, prog_bar=True)
        # The curve's training loss is the task loss, comparable with val/loss.
        self.log(TRAIN_LOSS_EPOCH, task, on_step=False, on_epoch=True)
        if kd is not None:
            self.log(KD_LOSS, kd, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.net.parameters())
        if self.scheduler in (None, "none"):
            return optimizer
        if self.scheduler == "cosine":  # from the optimizer's lr down to 0 at the last epoch
            schedule: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=_finite(self.trainer.max_epochs, "max_epochs"))
            interval = "epoch"
        elif self.scheduler == "onecycle":
            # Up from lr/25 to lr over the first 30% of the steps, then down to lr/25e4. The
            # momentum (Adam's beta1) stays the optimizer's: the schedule changes the lr only.
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=_finite(self.trainer.estimated_stepping_batches, "steps"),
                cycle_momentum=False)
            interval = "step"
        else:
            raise ValueError(f"scheduler: must be one of {', '.join(SCHEDULERS)} (or None), "
                             f"got {self.scheduler!r}")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": interval}}


def _finite(count: float | int | None, what: str) -> int:
    """A schedule's length: a positive, finite count of epochs or steps."""
    if count is None or count < 1 or math.isinf(count):
        raise ValueError(f"scheduler: needs a finite number of {what}, got {count}")
    return int(count)


class ReconstructionTask(_Task):
    """Autoencoder training: mean squared reconstruction error of the window.

    Distillation: the student also matches the teacher's reconstruction,
    ``kd = MSE(student(x), teacher(x))``; the temperature is unused (no softmax). The teacher's
    output is a smoother, denoised target than ``x`` itself, and matching it hands over the
    teacher's residual pattern, which is what the anomaly threshold is set on.
    """

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch, batch

    def task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target)

    def kd_loss(self, out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, teacher_out)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x, target = self.split(batch)
        self.log(VAL_LOSS, self.task_loss(self.net(x), target), prog_bar=True)


class ClassificationTask(_Task):
    """Classifier training: cross-entropy, with validation accuracy for the progress bar.

    Distillation (Hinton et al. 2015): ``kd = KL(softmax(teacher / T) || softmax(student / T))
    * T^2``; the ``T^2`` keeps its gradients on the scale of the cross-entropy's as T grows.
    """

    def split(self, batch: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        return batch

    def task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target)

    def kd_loss(self, out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        return F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(teacher_out / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log(VAL_LOSS, self.task_loss(logits, y), prog_bar=True)
        self.log(VAL_ACC, (logits.argmax(1) == y).float().mean(), prog_bar=True)


TASKS: dict[str, type[_Task]] = {
    "anomaly": ReconstructionTask,
    "classification": ClassificationTask,
}


@contextmanager
def dropout_rate(net: nn.Module, rate: float | None) -> Iterator[None]:
    """Every ``nn.Dropout`` of ``net`` at ``rate`` inside the block (None: unchanged), then
    back at its own rate. Fine-tuning a trained network rarely needs the regularisation that
    trained it from scratch, and dropout's noise keeps a short fine-tune from settling."""
    layers = [m for m in net.modules() if isinstance(m, nn.Dropout)] if rate is not None else []
    rates = [m.p for m in layers]
    for m in layers:
        m.p = rate
    try:
        yield
    finally:
        for m, p in zip(layers, rates, strict=True):
            m.p = p


def _progress_bar(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return sys.stderr.isatty() and not os.environ.get("CI")


def build_trainer(cfg: DictConfig, *, max_epochs: int | None = None,
                  callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` (without tinyexp's own keys, ``resume``) with the
    configured callbacks (but those set to null: ``callbacks.early_stopping=null`` switches it
    off), then ``callbacks``."""
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks = configured + list(callbacks or [])
    overrides: dict[str, Any] = {
        "callbacks": callbacks,
        "enable_progress_bar": _progress_bar(cfg.trainer.get("enable_progress_bar")),
    }
    if any(isinstance(c, EpochCheckpoint) for c in callbacks):
        overrides["enable_checkpointing"] = True  # Lightning refuses a Checkpoint otherwise
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    return instantiate({k: v for k, v in node.items() if k not in TINYEXP_TRAINER_KEYS},
                       **overrides)


def _check_distill(teacher: nn.Module | None, distill: Mapping[str, Any] | None) -> None:
    if teacher is None and distill is None:
        return
    if teacher is None or distill is None:
        raise ValueError("distill: a teacher and its distill settings go together, got "
                         f"teacher={type(teacher).__name__}, distill={distill!r}")
    if set(distill) != {"temperature", "weight"}:
        raise ValueError(f"distill: must have the keys temperature and weight, got {dict(distill)}")
    if not distill["temperature"] > 0:
        raise ValueError(f"distill.temperature: must be > 0, got {distill['temperature']}")
    if not 0 <= distill["weight"] <= 1:
        raise ValueError(f"distill.weight: must be in [0, 1], got {distill['weight']}")


def train(net: nn.Module, datamodule: pl.LightningDataModule, cfg: DictConfig, *,
          max_epochs: int | None = None, extra_callbacks: list[pl.Callback] | None = None,
          on_epoch: EpochHook | None = None, optim: Mapping[str, Any] | None = None,
          scheduler: str | None = None, teacher: nn.Module | None = None,
          distill: Mapping[str, Any] | None = None,
          checkpoints: str | Path | None = None) -> dict[str, Any]:
    """Train ``net`` in place with the Trainer, optimizer and callbacks of ``cfg``.

    Without ``optim``, ``scheduler`` and ``teacher`` this is the baseline's training: the
    optimizer of ``cfg.optim`` at a constant learning rate on the task loss.

    Args:
        net: the network to train; its best-validation weights are loaded back at the end.
        datamodule: provides ``train_dataloader``/``val_dataloader`` and ``task``.
        cfg: the full config (``trainer``, ``optim``, ``callbacks``, ``seed``).
        max_epochs: overrides ``trainer.max_epochs`` (fine-tuning).
        extra_callbacks: added to the configured ones (e.g. an Optuna pruning callback).
        on_epoch: called as ``on_epoch(epoch, {"train_loss": ..., "val_loss": ...})`` after
            each epoch's validation, epochs counted from 1 (a tracker's ``curve_logger``). The
            RNG states are restored after each call, so it cannot change the training.
        optim: overrides of ``cfg.optim``'s keys for this training (``{"lr": 1e-4}``); the
            optimizer class stays the configured one.
        scheduler: the learning-rate schedule: ``None``/``"none"`` (constant), ``"cosine"``
            (cosine annealing from the lr to 0 over ``max_epochs``, stepped per epoch) or
            ``"onecycle"`` (one cycle peaking at the lr, over every step of ``max_epochs``).
        teacher: distil from this network; it is frozen in place (eval mode, no gradients),
            never trained and not part of the weights :class:`RestoreBest` keeps.
        distill: with ``teacher``: ``{"temperature": T, "weight": w}``; the training loss is
            ``(1 - w) * task loss + w * distillation loss`` (see the task classes), logged as
            ``train/loss``, with the distillation term's epoch mean as ``train/kd_loss``.
            ``val/loss`` and the curve stay the pure task loss.
        checkpoints: a folder: the training state is saved there after every epoch
            (:class:`tinyexp.epochs.EpochCheckpoint`), and a training that finds a checkpoint
            there resumes after its epoch, to the weights and curve an uninterrupted one ends
            with. A damaged checkpoint is reported and discarded: the training starts over.

    Returns:
        ``epochs``, ``best_val_loss``, ``train_seconds`` and ``curve``: the epoch means
        ``{"train_loss": [...], "val_loss": [...]}`` of the task loss, one value per epoch.

    Raises:
        ValueError: an unknown ``scheduler``, a teacher without ``distill`` settings (or the
            reverse), or settings out of range.
    """
    if scheduler not in (None, *SCHEDULERS):
        raise ValueError(f"scheduler: must be one of {', '.join(SCHEDULERS)} (or None), "
                         f"got {scheduler!r}")
    _check_distill(teacher, distill)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net.train()  # Lightning keeps the mode it finds; a measured (eval) net must train with dropout
    task = TASKS[datamodule.task](net, instantiate(cfg.optim, **dict(optim or {})),
                                  scheduler=scheduler, teacher=teacher, distill=distill)
    best, curve = RestoreBest(), LossCurve(on_epoch)
    callbacks = [best, curve, *(extra_callbacks or [])]
    saver, resume_from = None, None
    if checkpoints is not None:
        saver = EpochCheckpoint(checkpoints)
        callbacks.append(saver)
        found = last_checkpoint(checkpoints)
        if found is not None:
            resume_from = found[0]
            log.info("training: resuming after epoch %d from %s", found[1], resume_from)
    trainer = build_trainer(cfg, max_epochs=max_epochs, callbacks=callbacks)
    start = time.perf_counter()
    with saver.resumable(datamodule) if saver else nullcontext():
        # weights_only: the checkpoint holds tensors and plain values only (EpochCheckpoint).
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from,
                    weights_only=True if resume_from else None)
    net.eval()
    return {
        "epochs": int(trainer.current_epoch),  # epochs completed: the curve's length
        "best_val_loss": best.best,
        "train_seconds": time.perf_counter() - start,
        "curve": curve.curve,
    }
