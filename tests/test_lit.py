"""Training as every stage uses it: the loss falls, the model beats a trivial predictor, and
the weights that come back are the best validation epoch's."""

from __future__ import annotations

import copy
import math
import random
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from tinyexp.lit import ClassificationTask, ReconstructionTask, RestoreBest, build_trainer, train
from tinyexp.pipeline import build_datamodule, build_net

pytestmark = pytest.mark.usefixtures("single_thread")


def _val_loss(net: nn.Module, datamodule, task: str) -> float:
    """Mean validation loss of ``net`` over the whole validation set, as training measures it."""
    net.eval()
    losses, sizes = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            if task == "anomaly":
                loss = F.mse_loss(net(batch), batch)
                size = len(batch)
            else:
                x, y = batch
                loss = F.cross_entropy(net(x), y)
                size = len(y)
            losses.append(float(loss) * size)
            sizes.append(size)
    return sum(losses) / sum(sizes)


def test_classifier_learns_well_beyond_the_majority_class(compose_cfg):
    cfg = compose_cfg(["dataset=digits", "arch=custom_cnn", "trainer.max_epochs=3"])
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule)
    before = _val_loss(net, datamodule, "classification")
    info = train(net, datamodule, cfg)
    assert info["best_val_loss"] < 0.5 * before
    x, y = datamodule.test_arrays()
    with torch.no_grad():
        accuracy = float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    majority = np.bincount(y).max() / len(y)  # the best a model that learned nothing can do
    assert majority < 0.15
    assert accuracy > 0.8, accuracy
    curve = info["curve"]
    assert len(curve["train_loss"]) == len(curve["val_loss"]) == info["epochs"] == 3
    assert curve["val_loss"][-1] < curve["val_loss"][0] and min(curve["val_loss"]) < before


def test_autoencoder_reconstructs_better_than_the_mean_window(compose_cfg):
    cfg = compose_cfg(["trainer=smoke", "trainer.max_epochs=5", "trainer.limit_train_batches=1.0",
                       "trainer.limit_val_batches=1.0", "dataset.train_steps=2000",
                       "dataset.test_steps=640"])
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule)
    before = _val_loss(net, datamodule, "anomaly")
    info = train(net, datamodule, cfg)
    after = _val_loss(net, datamodule, "anomaly")
    assert after == pytest.approx(info["best_val_loss"], rel=1e-4)
    assert after < 0.7 * before  # seeds 0-4: 0.51-0.66 of the untrained loss
    # The trivial reconstruction: every window predicted as the training data's mean window.
    mean = datamodule.train_windows.mean(dim=0, keepdim=True)
    trivial = float(F.mse_loss(mean.expand_as(datamodule.val_windows), datamodule.val_windows))
    # seeds 0-4: 0.38-0.53 of the trivial error; an untrained net: 0.75-0.83
    assert after < 0.65 * trivial, (after, trivial)


# ----------------------------------------------------------------------------- RestoreBest


class _Scheduled(pl.LightningModule):
    """One weight that training sets to a planned value per epoch; val loss = weight^2.

    The plan makes epoch 1 the best (0.5^2) and the last epoch worse, as after early stopping.
    """

    PLAN = (2.0, 0.5, 1.5, 3.0)

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(9.0))

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.w.fill_(self.PLAN[self.current_epoch])
        return (self.w * 0.0).sum() + batch.sum() * 0.0

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.w.detach() ** 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=4)


def test_restore_best_loads_the_best_epochs_weights_back():
    module, best = _Scheduled(), RestoreBest()
    trainer = pl.Trainer(max_epochs=len(_Scheduled.PLAN), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[best])
    trainer.fit(module)
    assert best.best == pytest.approx(0.25)
    assert float(module.w) == pytest.approx(0.5)  # not the last epoch's 3.0


class _History(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val/loss"]))


def test_train_hands_back_the_best_epoch_not_the_last(compose_cfg):
    # A learning rate this high makes the validation loss bounce: the last epoch is not the best.
    cfg = compose_cfg(["trainer=smoke", "trainer.max_epochs=6", "optim.lr=0.05",
                       "trainer.limit_val_batches=1.0",
                       "dataset.train_steps=640", "dataset.test_steps=640"])
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule)
    history = _History()
    info = train(net, datamodule, cfg, extra_callbacks=[history])
    assert min(history.losses) < history.losses[-1], history.losses  # the premise
    assert info["best_val_loss"] == pytest.approx(min(history.losses))
    assert _val_loss(net, datamodule, "anomaly") == pytest.approx(min(history.losses), rel=1e-4)


def test_trainer_gets_the_configured_callbacks_then_the_extra_ones(compose_cfg):
    cfg = compose_cfg(["trainer=smoke"])
    extra = RestoreBest()
    trainer = build_trainer(cfg, max_epochs=3, callbacks=[extra])
    kinds = [type(c).__name__ for c in trainer.callbacks]
    assert kinds.index("EarlyStopping") < kinds.index("RestoreBest")
    assert trainer.max_epochs == 3
    none = OmegaConf.merge(cfg, {"callbacks": None})
    assert "EarlyStopping" not in [type(c).__name__ for c in build_trainer(none).callbacks]


# ----------------------------------------------------------------------------- loss curves

# Early stopping that always fires after the second epoch: the first one improves on infinity,
# and no later one can improve by 1e9.
STOPS_AFTER_TWO = ["trainer=smoke", "trainer.max_epochs=5", "dataset.train_steps=640",
                   "dataset.test_steps=640", "callbacks.early_stopping.patience=1",
                   "+callbacks.early_stopping.min_delta=1e9"]


class _StepLosses(pl.Callback):
    """The training loss of every step and its batch size, epoch by epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[tuple[float, int]]] = []

    def on_train_epoch_start(self, trainer, module):
        self.epochs.append([])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.epochs[-1].append((float(outputs["loss"]), len(batch)))


def test_the_curve_has_each_epochs_mean_losses_and_on_epoch_sees_them_as_they_end(compose_cfg):
    cfg = compose_cfg(STOPS_AFTER_TWO)
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule)
    calls, steps, history = [], _StepLosses(), _History()
    info = train(net, datamodule, cfg, extra_callbacks=[steps, history],
                 on_epoch=lambda epoch, values: calls.append((epoch, values)))
    curve = info["curve"]
    # Epochs count from 1 and end at the count train() reports (early stopping cut it short).
    assert info["epochs"] == 2 < cfg.trainer.max_epochs
    assert [epoch for epoch, _ in calls] == [1, 2]
    assert [values for _, values in calls] == [
        {"train_loss": t, "val_loss": v} for t, v in zip(*curve.values(), strict=True)]
    assert list(curve) == ["train_loss", "val_loss"]
    assert all(len(values) == info["epochs"] for values in curve.values())
    # The training loss is the epoch's mean over its batches, not the last step's value.
    means = [sum(loss * n for loss, n in epoch) / sum(n for _, n in epoch)
             for epoch in steps.epochs]
    assert curve["train_loss"] == pytest.approx(means, rel=1e-6)
    assert curve["train_loss"][-1] != pytest.approx(steps.epochs[-1][-1][0], rel=1e-3)
    # The validation loss is the one early stopping and the best-weights choice look at.
    assert curve["val_loss"] == history.losses
    assert min(curve["val_loss"]) == info["best_val_loss"]


def test_on_epoch_changes_nothing_in_the_training_even_when_it_draws_random_numbers(
        compose_cfg):
    def greedy(epoch, values):  # an MLflow request retrying with random jitter, say
        random.random(), np.random.rand(3), torch.rand(3)

    results = []
    for on_epoch in (None, greedy):
        cfg = compose_cfg(["trainer=smoke", "trainer.max_epochs=3", "arch.dropout=0.3",
                           "dataset.train_steps=640", "dataset.test_steps=640"])
        datamodule = build_datamodule(cfg)
        net = build_net(cfg, datamodule)
        info = train(net, datamodule, cfg, on_epoch=on_epoch)
        info.pop("train_seconds")
        results.append((net.state_dict(), info, torch.get_rng_state(), np.random.rand(),
                        random.random()))
    (weights, info, torch_rng, np_draw, py_draw), again = results
    assert all(torch.equal(weights[k], again[0][k]) for k in weights)
    assert info == again[1] and info["epochs"] == 3
    assert torch.equal(torch_rng, again[2]) and (np_draw, py_draw) == again[3:]


# ----------------------------------------------------------------------------- fine-tuning:
# optimizer overrides, learning-rate schedules, knowledge distillation

SMOKE = ["trainer=smoke", "dataset.train_steps=640", "dataset.test_steps=640"]


class _Rates(pl.Callback):
    """The optimizer's lr (and Adam's betas) at every training step, epoch by epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []
        self.betas: set[tuple[float, float]] = set()

    def on_train_epoch_start(self, trainer, module):
        self.epochs.append([])

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self.epochs[-1].append(group["lr"])
        self.betas.add(tuple(group["betas"]))


def _train_rates(compose_cfg, epochs: int, **kwargs) -> _Rates:
    cfg = compose_cfg([*SMOKE, f"trainer.max_epochs={epochs}"])
    datamodule = build_datamodule(cfg)
    rates = _Rates()
    train(build_net(cfg, datamodule), datamodule, cfg, extra_callbacks=[rates], **kwargs)
    assert len(rates.epochs) == epochs and all(len(e) == 4 for e in rates.epochs)  # smoke: 4
    return rates


def test_without_a_scheduler_the_lr_is_constant_and_optim_overrides_it(compose_cfg):
    assert {lr for epoch in _train_rates(compose_cfg, 2).epochs for lr in epoch} == {1e-3}
    rates = _train_rates(compose_cfg, 2, optim={"lr": 3e-4}, scheduler="none")
    assert {lr for epoch in rates.epochs for lr in epoch} == {3e-4}


def test_cosine_anneals_the_lr_once_per_epoch_over_max_epochs(compose_cfg):
    rates = _train_rates(compose_cfg, 4, optim={"lr": 0.01}, scheduler="cosine")
    for epoch, lrs in enumerate(rates.epochs):
        assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * epoch / 4)) / 2] * 4)
    assert rates.betas == {(0.9, 0.999)}


def test_onecycle_rises_to_the_lr_and_falls_over_every_step(compose_cfg):
    rates = _train_rates(compose_cfg, 3, optim={"lr": 0.01}, scheduler="onecycle")
    lrs = [lr for epoch in rates.epochs for lr in epoch]  # 12 steps, stepped after each
    assert lrs[0] == pytest.approx(0.01 / 25)  # OneCycleLR's start: max_lr / div_factor
    peak = lrs.index(max(lrs))
    assert 0.009 < max(lrs) <= 0.01 and peak == 3  # 30% of 12 steps: the lr is the peak
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1]) and lrs[peak:] == sorted(lrs[peak:])[::-1]
    assert lrs[-1] < 0.01 / 25  # annealed below the start
    assert rates.betas == {(0.9, 0.999)}  # the lr only: Adam's momentum is left alone


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scheduler": "step"}, "scheduler: must be one of none, cosine, onecycle"),
    ({"distill": {"temperature": 4.0, "weight": 0.5}}, "distill: a teacher and its distill"),
    ({"teacher": nn.Linear(1, 1)}, "distill: a teacher and its distill"),
    ({"teacher": nn.Linear(1, 1), "distill": {"temperature": 0, "weight": 0.5}},
     "distill.temperature: must be > 0"),
    ({"teacher": nn.Linear(1, 1), "distill": {"temperature": 1, "weight": 1.5}},
     "distill.weight: must be in [0, 1]"),
    ({"teacher": nn.Linear(1, 1), "distill": {"weight": 0.5}}, "distill: must have the keys"),
])
def test_bad_fine_tuning_arguments_fail_before_training_naming_the_argument(
        compose_cfg, kwargs, message):
    cfg = compose_cfg(SMOKE)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        train(nn.Linear(1, 1), None, cfg, **kwargs)


def test_classification_kd_loss_is_hintons_softened_kl_times_t_squared():
    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 4), nn.Linear(5, 4)
    x, y = torch.randn(3, 5), torch.tensor([0, 3, 1])
    task = ClassificationTask(student, torch.optim.Adam, teacher=teacher,
                              distill={"temperature": 3.0, "weight": 0.25})
    loss, ce, kd = task.losses((x, y))
    def log_softmax(z):
        return z - z.exp().sum(1, keepdim=True).log()

    z, t = student(x).detach(), teacher(x).detach()
    p_t = log_softmax(t / 3.0).exp()
    hand_kd = float((p_t * (p_t.log() - log_softmax(z / 3.0))).sum(1).mean()) * 3.0**2
    hand_ce = float(-log_softmax(z)[range(3), y].mean())
    assert float(kd) == pytest.approx(hand_kd, rel=1e-5) and hand_kd > 0
    assert float(ce) == pytest.approx(hand_ce, rel=1e-5)
    assert float(loss) == pytest.approx(0.75 * hand_ce + 0.25 * hand_kd, rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is only read


def test_autoencoder_kd_loss_is_the_mse_to_the_teachers_reconstruction():
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 6), nn.Linear(6, 6)
    x = torch.randn(2, 6)
    task = ReconstructionTask(student, torch.optim.Adam, teacher=teacher,
                              distill={"temperature": 4.0, "weight": 0.5})
    loss, mse, kd = task.losses(x)
    hand_kd = float(((student(x) - teacher(x)) ** 2).mean())
    assert float(kd) == pytest.approx(hand_kd, rel=1e-6)
    assert float(loss) == pytest.approx(0.5 * float(mse) + 0.5 * hand_kd, rel=1e-6)


class _TeacherWatch(pl.Callback):
    """During training: whether the teacher is in eval mode, out of the optimizer and out of
    the state_dict RestoreBest keeps."""

    def __init__(self) -> None:
        self.seen: set[tuple[bool, bool, bool]] = set()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        teacher = module.teacher
        optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.seen.add((teacher.training,
                       any(id(p) in optimized for p in teacher.parameters()),
                       all(k.startswith("net.") for k in module.state_dict())))


def test_the_teacher_stays_frozen_and_out_of_the_optimizer_and_the_kept_weights(compose_cfg):
    cfg = compose_cfg([*SMOKE, "trainer.max_epochs=2", "arch.dropout=0.3"])
    datamodule = build_datamodule(cfg)
    teacher, student = build_net(cfg, datamodule), build_net(cfg, datamodule)
    teacher.train()  # as a caller might hand it over: train mode, gradients on
    before = copy.deepcopy(teacher.state_dict())
    watch, metrics = _TeacherWatch(), {}
    grab = pl.Callback()
    grab.on_train_end = lambda trainer, module: metrics.update(trainer.callback_metrics)
    train(student, datamodule, cfg, teacher=teacher, extra_callbacks=[watch, grab],
          distill={"temperature": 4.0, "weight": 0.5})
    assert watch.seen == {(False, False, True)}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert float(metrics["train/kd_loss"]) > 0


def test_val_loss_stays_the_task_loss_when_the_training_loss_is_all_distillation(compose_cfg):
    cfg = compose_cfg(["dataset=digits", "arch=custom_cnn", "trainer=smoke",
                       "trainer.max_epochs=3", "trainer.limit_val_batches=1.0"])
    datamodule = build_datamodule(cfg)
    teacher = build_net(cfg, datamodule)  # untrained: its outputs are far from the labels
    torch.manual_seed(1)
    student = build_net(cfg, datamodule)
    history = _History()
    info = train(student, datamodule, cfg, extra_callbacks=[history], teacher=teacher,
                 distill={"temperature": 2.0, "weight": 1.0})
    assert info["best_val_loss"] == pytest.approx(min(history.losses))
    assert _val_loss(student, datamodule, "classification") == pytest.approx(
        min(history.losses), rel=1e-4)  # cross-entropy, not the KL to the teacher


def test_the_fine_tuning_arguments_at_their_defaults_change_nothing(compose_cfg):
    """The same seed gives the same weights with the arguments spelled out, and with a teacher
    whose weight is 0 (its forward pass draws no random numbers: eval mode)."""
    results = []
    for kwargs in ({}, {"optim": {"lr": 1e-3}, "scheduler": "none"},
                   {"teacher": nn.Identity(), "distill": {"temperature": 1.0, "weight": 0.0}}):
        cfg = compose_cfg([*SMOKE, "trainer.max_epochs=2", "arch.dropout=0.3"])
        datamodule = build_datamodule(cfg)
        net = build_net(cfg, datamodule)
        info = train(net, datamodule, cfg, **kwargs)
        results.append((net.state_dict(), info["curve"]))
    (weights, curve), *others = results
    for other_weights, other_curve in others:
        assert all(torch.equal(weights[k], other_weights[k]) for k in weights)
        assert other_curve == curve


def test_dropout_rate_sets_every_dropout_inside_the_block_and_restores_it():
    from torch import nn

    from tinyexp.lit import dropout_rate

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.3)))
    with dropout_rate(net, 0.0):
        assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.0, 0.0]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.3]
    with dropout_rate(net, None):  # null: the network's own rates
        assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.3]
