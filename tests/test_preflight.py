"""Preflight: the optimizer, callbacks and Trainer of a config are built once before a run, and
every bad value fails with its own one-line error naming the key; the settings users put in
these nodes keep working."""

from __future__ import annotations

import os

import pytest
import torch
from image_files import PRESET_DATA, data_dir_overrides
from support import CONF, TINY, compose

from tinyexp.config import validate
from tinyexp.lit import MONITORABLE, TRAIN_LOSS_EPOCH, train
from tinyexp.pipeline import build_datamodule, build_net
from tinyexp.preflight import preflight
from tinyexp.schemas import ConfigError

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is available here")
DIGITS = ["dataset=digits", "arch=custom_cnn"]
CKPT = ["+callbacks.ckpt._target_=pytorch_lightning.callbacks.ModelCheckpoint"]
EARLY = "callbacks.early_stopping"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cache folder validate() creates lands here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _check(overrides: list[str]) -> None:
    """As pipeline.run does: the cheap checks, then the preflight."""
    cfg = compose(overrides)
    validate(cfg)
    preflight(cfg)


GOOD = [
    [],
    ["trainer=smoke"],
    [*DIGITS, f"{EARLY}.monitor=val/acc", f"{EARLY}.mode=max"],
    [f"{EARLY}.monitor=train/loss", f"+{EARLY}.min_delta=0.001", f"+{EARLY}.strict=false"],
    [f"{EARLY}.monitor={TRAIN_LOSS_EPOCH}"],
    [f"{EARLY}=null"],
    ["callbacks=null"],
    ["optim._target_=torch.optim.SGD", "+optim.momentum=0.9", "+optim.nesterov=true",
     "+optim.weight_decay=1e-4"],
    ["optim._target_=torch.optim.AdamW", "+optim.betas=[0.9,0.99]", "+optim.eps=1e-7"],
    ["+trainer.gradient_clip_val=1.0", "+trainer.gradient_clip_algorithm=value",
     "+trainer.precision=bf16-mixed", "+trainer.accumulate_grad_batches=2"],
    ["+trainer.precision=32-true", "+trainer.num_sanity_val_steps=0", "+trainer.benchmark=false"],
    ["trainer.accelerator=auto", "trainer.devices=auto"],
    ["trainer=smoke", "trainer.limit_train_batches=0.5", "trainer.limit_val_batches=1"],
    ["+trainer.val_check_interval=0.5", "+trainer.check_val_every_n_epoch=1"],
    [*CKPT, "+callbacks.ckpt.monitor=val/loss", "trainer.enable_checkpointing=true"],
    [*CKPT, "trainer.enable_checkpointing=true"],  # no monitor: keeps the last epoch
    ["+callbacks.lr._target_=pytorch_lightning.callbacks.LearningRateMonitor"],
    ["+callbacks.es2._target_=pytorch_lightning.callbacks.EarlyStopping",
     "+callbacks.es2.monitor=val/loss", "+callbacks.es2.mode=max"],
]


@pytest.mark.parametrize("overrides", GOOD, ids=str)
def test_settings_users_put_in_these_nodes_pass(overrides):
    _check(overrides)


BAD = [
    # trainer
    (["++trainer.limit_train_batches=0"], "trainer.limit_train_batches", "nothing"),
    (["++trainer.limit_train_batches=-1"], "trainer.limit_train_batches", "(0, 1]"),
    (["++trainer.limit_train_batches=1.5"], "trainer.limit_train_batches", "(0, 1]"),
    (["++trainer.limit_val_batches=0.0"], "trainer.limit_val_batches", "nothing"),
    (["+trainer.val_check_interval=0"], "trainer.val_check_interval", "int >= 1"),
    (["+trainer.max_steps=0"], "trainer.max_steps", "-1"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", ">= 1"),
    (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", ">= 0"),
    (["+trainer.gradient_clip_val=inf"], "trainer.gradient_clip_val", "finite"),
    pytest.param(["trainer.accelerator=gpu"], "trainer.accelerator",
                 "'gpu' but no GPU is available here; allowed: cpu, auto", marks=NO_GPU),
    pytest.param(["trainer.accelerator=cuda"], "trainer.accelerator", "no GPU", marks=NO_GPU),
    (["trainer.accelerator=tpu"], "trainer.accelerator", "refuses it"),
    (["+trainer.foo=1"], "trainer.foo", "not an argument of Trainer; allowed: accelerator"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch", "did you mean 'max_epochs'"),
    (["+trainer.precision=17"], "trainer.precision", "Precision 17 is invalid"),
    (["+trainer.strategy=nope"], "trainer.strategy", "invalid strategy"),
    (["trainer.devices=0"], "trainer.devices", "devices=0"),
    (["+trainer.callbacks=[]"], "trainer.callbacks", "top-level `callbacks`"),
    (["trainer._target_=torch.optim.Adam"], "trainer._target_", "not a pytorch_lightning.Trainer"),
    (["trainer._target_=pytorch_lightning.Nope"], "trainer._target_", "cannot import"),
    # optim
    (["optim._target_=torch.optim.Nope"], "optim._target_", "cannot import 'torch.optim.Nope'"),
    (["optim._target_=torch.nn.Linear"], "optim._target_", "not a torch.optim.Optimizer"),
    (["optim.lr=-1"], "optim.lr", "> 0"),
    (["optim.lr=nan"], "optim.lr", "finite"),
    (["+optim.momentum=0.9"], "optim.momentum", "not an argument of Adam; allowed: lr, betas"),
    (["+optim.betas=[1.5,0.9]"], "optim.betas", "Invalid beta parameter"),
    (["+optim.eps=-1"], "optim.eps", "Invalid epsilon"),
    (["+optim.weight_decay=-0.1"], "optim.weight_decay", "weight_decay"),
    (["optim._target_=torch.optim.SGD", "+optim.momentum=-0.5"], "optim.momentum", "momentum"),
    (["~optim._partial_"], "optim._partial_", "must be true"),
    (["+optim.params=[]"], "optim.params", "set by tinyexp"),
    # callbacks
    ([f"{EARLY}.mode=sideways"], f"{EARLY}.mode", "min or max"),
    ([f"{EARLY}.monitor=val/nope"], f"{EARLY}.monitor",
     "allowed for anomaly data: train/loss, train/loss_epoch, val/loss"),
    ([f"{EARLY}.monitor=val/acc"], f"{EARLY}.monitor", "not logged"),  # classification only
    ([*DIGITS, f"{EARLY}.monitor=val/nope"], f"{EARLY}.monitor", "val/loss, val/acc"),
    ([f"{EARLY}.monitor={TRAIN_LOSS_EPOCH}", f"+{EARLY}.check_on_train_epoch_end=false"],
     f"{EARLY}.monitor", "once a training epoch ends"),
    ([f"{EARLY}.monitor={TRAIN_LOSS_EPOCH}", "+trainer.val_check_interval=0.5"],
     f"{EARLY}.monitor", "once a training epoch ends"),
    ([f"{EARLY}.patience=-1"], f"{EARLY}.patience", "int >= 0"),
    ([f"{EARLY}.patience=1.5"], f"{EARLY}.patience", "int >= 0"),
    ([f"~{EARLY}.monitor"], f"{EARLY}.monitor", "required by EarlyStopping"),
    ([f"+{EARLY}.foo=1"], f"{EARLY}.foo", "not an argument of EarlyStopping"),
    ([f"+{EARLY}.min_delta=nan"], f"{EARLY}.min_delta", "finite"),
    ([f"+{EARLY}._partial_=true"], EARLY, "not a callback"),
    ([f"{EARLY}._target_=torch.optim.Adam"], f"{EARLY}._target_",
     "not a pytorch_lightning.Callback"),
    ([f"{EARLY}._target_=lightning.pytorch.callbacks.EarlyStopping"], f"{EARLY}._target_",
     "pytorch_lightning.* namespace"),
    (["+callbacks.x=1"], "callbacks.x", "_target_"),
    (["+callbacks.es2._target_=pytorch_lightning.callbacks.EarlyStopping",
      "+callbacks.es2.monitor=val/loss"], EARLY, "more than one stateful callback"),
    ([*CKPT, "+callbacks.ckpt.monitor=val/loss"], "trainer.enable_checkpointing",
     "enable_checkpointing=False"),
    ([*CKPT, "trainer.enable_checkpointing=true", "+callbacks.ckpt.save_top_k=-2"],
     "callbacks.ckpt.save_top_k", "save_top_k"),
    ([*CKPT, "trainer.enable_checkpointing=true", "+callbacks.ckpt.monitor=val/nope"],
     "callbacks.ckpt.monitor", "not logged"),
    ([*CKPT, "trainer.enable_checkpointing=true", "+callbacks.ckpt.mode=up"],
     "callbacks.ckpt.mode", "min or max"),
]


def _id(value):
    return " ".join(value) if isinstance(value, list) else str(value)


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD, ids=_id)
def test_bad_values_name_the_key_and_what_is_allowed(overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        _check(overrides)
    message = str(err.value)
    assert err.value.key == key, message
    assert message.startswith(f"{key}: ") and hint in message, message
    assert "\n" not in message


@pytest.mark.parametrize("path", sorted((CONF / "trainer").glob("*.yaml")) + sorted(
    (CONF / "experiment").glob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_trainer_and_experiment_file_passes(path):
    _check([f"{path.parent.name}={path.stem}",
            *data_dir_overrides(PRESET_DATA.get(path.stem, ""))])  # image presets: their files


def test_torch_flags_are_left_as_found():
    """The Trainer of the default config (deterministic: true) switches torch's deterministic
    algorithms on for the whole process; the preflight must not."""
    before = torch.are_deterministic_algorithms_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    _check([])
    assert torch.are_deterministic_algorithms_enabled() == before
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == workspace


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("task", sorted(MONITORABLE))
@pytest.mark.parametrize("at_epoch_end", [True, False])
def test_every_monitorable_metric_is_there_when_early_stopping_looks(task, at_epoch_end):
    """MONITORABLE is what training really logs: an EarlyStopping (strict: a missing metric
    raises) on each metric the preflight allows trains without error, checking at the end of
    the training epoch (Lightning's default here) or after validation."""
    base = TINY[:3] if task == "anomaly" else ["trainer=smoke", *DIGITS]
    overrides = [*base, "trainer.max_epochs=2", f"{EARLY}=null"]
    allowed = [m for m in MONITORABLE[task] if at_epoch_end or m != TRAIN_LOSS_EPOCH]
    for i, metric in enumerate(allowed):
        node = f"callbacks.watch{i}"
        overrides += [f"+{node}._target_=pytorch_lightning.callbacks.EarlyStopping",
                      f"+{node}.monitor={metric}", f"+{node}.patience=5",
                      f"+{node}.check_on_train_epoch_end={str(at_epoch_end).lower()}"]
    cfg = compose(overrides)
    validate(cfg)
    preflight(cfg)
    datamodule = build_datamodule(cfg)
    info = train(build_net(cfg, datamodule), datamodule, cfg)
    assert info["epochs"] == 2
