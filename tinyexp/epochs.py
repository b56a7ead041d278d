"""What a training carries from one epoch to the next, and the checkpoint a killed one resumes from.

Three callbacks of :func:`tinyexp.lit.train`: :class:`RestoreBest` keeps the best validation
epoch's weights, :class:`LossCurve` the epoch means of the losses, :class:`EpochCheckpoint` saves
the whole training state after every epoch. Each keeps its state in ``state_dict``, so a
Lightning checkpoint carries it, and a training resumed after epoch k (``fit(ckpt_path=...)``)
ends with the weights, curve and epoch count of one that never stopped (same seed, CPU).
Lightning restores the weights, the optimizer, the loops and these states; what it does not keep,
the random number generators, :class:`EpochCheckpoint` saves and restores itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from torch.utils.data import DataLoader, Dataset, Sampler

from tinyexp.files import atomic_write

log = logging.getLogger(__name__)

VAL_LOSS = "val/loss"  # logged per batch, reduced by Lightning to the epoch mean
# The epoch mean of the training loss, for the loss curves. ``train/loss`` itself stays the
# last step's value (logging it on_epoch would turn it into the mean at epoch end, and change
# what EarlyStopping(monitor=train/loss) compares).
TRAIN_LOSS_EPOCH = "train/loss_epoch"
EpochHook = Callable[[int, dict[str, float]], Any]
# Names the last complete checkpoint of a folder, with its SHA-256: written after the checkpoint,
# it is the commit (a kill between the two leaves the previous pair valid).
POINTER = "last.json"


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

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.state = state["best"], state["state"]


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
    mean is only computed at the epoch's end. A resumed training passes the epochs it restored
    from its checkpoint on first, so the hook sees every epoch once, in order.
    """

    def __init__(self, on_epoch: EpochHook | None = None) -> None:
        self.on_epoch = on_epoch
        self.curve: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self._val_loss = math.nan
        self._restored = 0

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After Lightning restored the callbacks (on_train_start does not come when the
        # checkpoint is the last epoch's).
        for epoch in range(self._restored):
            self._pass_on(epoch + 1, {name: values[epoch] for name, values in self.curve.items()})

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_loss = _value(trainer.callback_metrics.get(VAL_LOSS))

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        values = {"train_loss": _value(trainer.callback_metrics.get(TRAIN_LOSS_EPOCH)),
                  "val_loss": self._val_loss}
        self._val_loss = math.nan
        for name, value in values.items():
            self.curve[name].append(value)
        self._pass_on(trainer.current_epoch + 1, values)

    def _pass_on(self, epoch: int, values: dict[str, float]) -> None:
        if self.on_epoch is not None:
            with _rng_untouched():
                self.on_epoch(epoch, dict(values))

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = {name: list(values) for name, values in state["curve"].items()}
        self._restored = len(self.curve["train_loss"])


class EpochCheckpoint(Checkpoint):
    """Save the training state into ``folder`` after every epoch, for a rerun to resume from.

    Atomic: ``epoch<N>.ckpt`` lands under a temporary name and is renamed (Lightning's own
    writer is not enough: fsspec writes it in the system temp folder and moves it, a copy that a
    kill can cut short when that folder is on another file system), then :data:`POINTER` names
    it with its SHA-256, then the older checkpoint goes. A Checkpoint subclass, so Lightning
    calls it after EarlyStopping has counted the epoch: the state saved is the epoch's final one.

    Lightning keeps no random number generator, and restores a DataLoader's own state only from
    a mid-epoch checkpoint. Saved here: torch's, NumPy's and Python's global generators
    (dropout) and every ``torch.Generator`` of the training DataLoader: tinyexp's data modules
    shuffle (and augment) with a seeded generator made afresh with each loader, so a resumed
    run's new loader would replay epoch 1's order. :meth:`resumable` sets them on that loader
    when it is made, before its first iterator draws from them.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        name = f"epoch{epoch}.ckpt"
        path = atomic_write(self.folder / name,
                            lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        atomic_write(self.folder / POINTER,
                     json.dumps({"file": name, "epoch": epoch, "sha256": digest}))
        for old in self.folder.glob("epoch*.ckpt"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._restored and self._restored["should_stop"]:
            trainer.should_stop = True  # killed after early stopping's last epoch: stop again

    def state_dict(self) -> dict[str, Any]:
        assert self._trainer is not None
        loader = _generators(self._trainer.train_dataloader)
        return {"rng": _global_rng(), "loader": {k: g.get_state() for k, g in loader.items()},
                "should_stop": bool(self._trainer.should_stop)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state

    @contextmanager
    def resumable(self, datamodule: pl.LightningDataModule) -> Iterator[None]:
        """Inside the block, the training loader ``datamodule`` makes starts from the restored
        generator states (the data module's own ``train_dataloader`` is back afterwards)."""
        make = datamodule.train_dataloader

        def train_dataloader() -> Any:
            loader = make()
            state, self._restored = self._restored, None
            if state is not None:
                _set_global_rng(state["rng"])
                found = _generators(loader)
                if set(found) == set(state["loader"]):
                    for key, generator in found.items():
                        generator.set_state(state["loader"][key])
                else:  # another loader than the checkpoint's (the code changed): go on anyway
                    log.warning("the training loader's generators %s are not the checkpoint's "
                                "%s: the data order after resuming differs from an "
                                "uninterrupted training's", sorted(found),
                                sorted(state["loader"]))
                self._restored = {"should_stop": state["should_stop"]}
            return loader

        datamodule.train_dataloader = train_dataloader
        try:
            yield
        finally:
            del datamodule.train_dataloader  # the class's method again


def last_checkpoint(folder: str | Path) -> tuple[Path, int] | None:
    """The checkpoint to resume from in ``folder`` and the epochs it completed, or None.

    One that does not match its checksum or does not load (``weights_only``) is reported,
    and the folder removed: the training starts over rather than from damaged weights.
    """
    folder = Path(folder)
    pointer = folder / POINTER
    if not pointer.exists():
        return None
    try:
        info = json.loads(pointer.read_text())
        path = folder / info["file"]
        if hashlib.sha256(path.read_bytes()).hexdigest() != info["sha256"]:
            raise ValueError(f"{path.name} does not match its checksum")
        torch.load(path, map_location="cpu", weights_only=True)
        return path, int(info["epoch"])
    except Exception as err:  # noqa: BLE001 - whatever is wrong with it, it is not resumed
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        log.warning("training checkpoint %s is damaged (%s); discarding it and training from "
                    "the start", folder, reason)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _global_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # Tensors and plain values only, so the checkpoint loads with weights_only=True.
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def _set_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _generators(loader: Any, path: str = "train", depth: int = 0,
                seen: set[int] | None = None) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` a DataLoader draws from (its own, its samplers', its dataset's),
    keyed by attribute path; a generator reached twice counts once, under its first path."""
    seen = set() if seen is None else seen
    if isinstance(loader, torch.Generator):
        if id(loader) in seen:
            return {}
        seen.add(id(loader))
        return {path: loader}
    if isinstance(loader, DataLoader | Dataset | Sampler) and depth < 4:
        items = sorted(vars(loader).items())
    elif isinstance(loader, list | tuple) and depth == 0:  # several training loaders
        items = [(str(i), item) for i, item in enumerate(loader)]
    elif isinstance(loader, dict) and depth == 0:
        items = sorted((str(k), v) for k, v in loader.items())
    else:
        return {}
    found: dict[str, torch.Generator] = {}
    for name, value in items:
        found.update(_generators(value, f"{path}.{name}", depth + 1, seen))
    return found
