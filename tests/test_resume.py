"""A killed baseline training, rerun with the same config, resumes after its last epoch and ends
with the weights, curve and metrics of a training that never stopped (trainer.resume=auto)."""

from __future__ import annotations

import json
import signal

import pytest
import pytorch_lightning as pl
import torch
from jobs import JOB, KILL_AT_EPOCH, baseline_metrics, finish, job_log, start_job
from support import run_cli

from tinyexp import cache, tracking
from tinyexp.config import validate
from tinyexp.lit import train
from tinyexp.pipeline import baseline, build_context, build_datamodule, build_net
from tinyexp.schemas import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level("INFO", logger="tinyexp")

FIVE_EPOCHS = ["trainer=smoke", "trainer.max_epochs=5"]
SERIES = ["dataset.train_steps=640", "dataset.test_steps=640"]
# Dropout draws from torch's global generator; the series shuffle with the loader's own seeded
# generator, the digits with their sampler's: each must be carried across the interruption.
CASES = {"cnn": SERIES, "lstm": [*SERIES, "arch=lstm"],
         "digits": ["dataset=digits", "arch=custom_cnn"]}


class _Stopped(RuntimeError):
    pass


class _StopAt(pl.Callback):
    """An interruption inside the test's process: the training raises as epoch k+1 starts."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.k:
            raise _Stopped(f"stopped after epoch {self.k}")


def _train(cfg, checkpoints, *callbacks):
    """Train the config's network from its seed: (weights, info, epochs the hook saw)."""
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule)
    seen = []
    info = train(net, datamodule, cfg, checkpoints=checkpoints, extra_callbacks=list(callbacks),
                 on_epoch=lambda epoch, values: seen.append((epoch, values)))
    info.pop("train_seconds")
    return {k: v.clone() for k, v in net.state_dict().items()}, info, seen


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", CASES)
def test_a_training_stopped_after_epoch_k_resumes_to_the_uninterrupted_result(
        compose_cfg, tmp_path, caplog, case):
    cfg = compose_cfg([*FIVE_EPOCHS, *CASES[case]])
    whole, info, _ = _train(cfg, None)  # no checkpoints at all, as with trainer.resume=never
    folder = tmp_path / "checkpoints"
    with pytest.raises(_Stopped):
        _train(cfg, folder, _StopAt(3))
    assert json.loads((folder / "last.json").read_text())["epoch"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["epoch3.ckpt", "last.json"]
    resumed, info2, seen = _train(cfg, folder)
    assert f"training: resuming after epoch 3 from {folder / 'epoch3.ckpt'}" in caplog.text
    # Bit for bit: weights, best validation loss, the whole curve, the epoch count.
    assert _same(resumed, whole)
    assert info2 == info and info["epochs"] == 5
    # The hook sees every epoch once, in order: the restored ones first.
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5]
    assert [v["val_loss"] for _, v in seen] == info["curve"]["val_loss"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "damage"), [
    ("epoch2.ckpt", _truncate),
    ("epoch2.ckpt", _flip_a_middle_byte),   # may still load: the checksum tells
    ("epoch2.ckpt", lambda p: p.unlink()),
    ("last.json", _truncate),
    ("last.json", lambda p: p.write_text("{}")),
])
def test_a_damaged_checkpoint_is_discarded_and_training_starts_over(compose_cfg, tmp_path,
                                                                    caplog, name, damage):
    cfg = compose_cfg([*FIVE_EPOCHS, *SERIES])
    folder = tmp_path / "checkpoints"
    with pytest.raises(_Stopped):
        _train(cfg, folder, _StopAt(2))
    damage(folder / name)
    again, info, _ = _train(cfg, folder)
    assert f"training checkpoint {folder} is damaged" in caplog.text
    assert "resuming" not in caplog.text
    whole, info_whole, _ = _train(cfg, None)
    assert _same(again, whole) and info == info_whole


@pytest.mark.parametrize(("settings", "epochs"), [
    ([], 5),
    # Nothing beats the first epoch by 100: early stopping ends the training after epoch 2.
    (["callbacks.early_stopping.patience=1", "+callbacks.early_stopping.min_delta=100"], 2),
], ids=["max_epochs", "early_stopping"])
def test_a_training_killed_after_its_last_epoch_resumes_to_the_same_end(
        compose_cfg, tmp_path, caplog, settings, epochs):
    # Killed after the last epoch, before the cache stored the baseline: the rerun trains no
    # further epoch (early stopping stays stopped) and still passes every epoch to the hook.
    cfg = compose_cfg([*FIVE_EPOCHS, *SERIES, *settings])
    whole, info, _ = _train(cfg, None)
    assert info["epochs"] == epochs
    folder = tmp_path / "checkpoints"
    _train(cfg, folder)  # its checkpoints stay: only the cache removes them, once it stored
    resumed, info2, seen = _train(cfg, folder)
    assert f"training: resuming after epoch {epochs}" in caplog.text
    assert _same(resumed, whole) and info2 == info
    assert [e for e, _ in seen] == list(range(1, epochs + 1))


class _WatchCheckpoints(tracking.NullTracker):
    """Notes, at each epoch of the baseline's training, whether a checkpoint exists."""

    def __init__(self, folder) -> None:
        self.folder, self.seen = folder, []

    def curve_logger(self, stage):
        return lambda epoch, values: self.seen.append((self.folder / "last.json").exists())


@pytest.mark.parametrize(("resume", "checkpointed"), [("auto", True), ("never", False)])
def test_the_baseline_checkpoints_only_with_resume_auto_and_drops_them_once_cached(
        compose_cfg, tmp_path, resume, checkpointed):
    cfg = compose_cfg([*FIVE_EPOCHS, *SERIES, "trainer.max_epochs=2",
                       f"trainer.resume={resume}", f"cache_dir={tmp_path}"])
    key = cache.baseline_key(cfg)
    assert key == cache.baseline_key(compose_cfg([*FIVE_EPOCHS, *SERIES, "trainer.max_epochs=2",
                                                  f"cache_dir={tmp_path}"]))
    datamodule = build_datamodule(cfg)
    tracker = _WatchCheckpoints(tmp_path / "checkpoints" / key)
    ctx = build_context(cfg, datamodule, tmp_path / "job", tracker)
    ctx.measure_float = lambda net, name: {}
    baseline(build_net(cfg, datamodule), ctx, cfg, tracker)
    # The hook runs before its epoch's checkpoint is saved: epoch 2 sees epoch 1's.
    assert tracker.seen == [False, checkpointed]
    assert not (tmp_path / "checkpoints" / key).exists()
    assert (tmp_path / "baselines" / key / "train.json").exists()


@pytest.mark.parametrize("value", ["maybe", "true", "null", "1"])
def test_trainer_resume_is_auto_or_never(compose_cfg, tmp_path, value):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([f"trainer.resume={value}", "logger=none",
                              f"cache_dir={tmp_path}"]))
    shown = {"maybe": "'maybe'", "true": "True", "null": "None", "1": "1"}[value]
    assert str(err.value) == f"trainer.resume: must be one of auto, never, got {shown}"


def test_a_bad_resume_value_fails_before_anything_runs(tmp_path):
    result = run_cli(["trainer.resume=sometimes", "cache_dir=cache"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "tinyexp: error: trainer.resume: must be one of auto, never, got 'sometimes'")


def test_both_values_pass_the_checks_before_a_run(compose_cfg, tmp_path):
    from tinyexp.preflight import preflight

    for value in ("auto", "never"):
        cfg = compose_cfg([f"trainer.resume={value}", "logger=none", f"cache_dir={tmp_path}"])
        validate(cfg)
        preflight(cfg)  # the Trainer is built without it: tinyexp's key, not Lightning's


# ----------------------------------------------------------------------------- real jobs


@pytest.mark.slow  # end to end, ~10 s: the slow tier (the fast tier stays under 10 minutes)
def test_a_job_killed_after_epoch_k_holding_the_lock_is_resumed_by_the_next(compose_cfg,
                                                                            tmp_path, caplog):
    # A real job, SIGKILLed as its third epoch starts, while it holds the baseline's lock; the
    # same config run here (in-process: cheap) neither waits for the dead job nor starts over.
    args = ["trainer.max_epochs=4"]
    killed = start_job(tmp_path, "killed", args, env={KILL_AT_EPOCH: "2"},
                       cache=str(tmp_path / "cache"))
    assert killed.wait(300) == -signal.SIGKILL, (tmp_path / "killed.out").read_text()[-3000:]
    assert "baseline: training" in job_log(tmp_path, "killed")

    def run_baseline(cache_dir):
        cfg = compose_cfg([*JOB, *args, f"cache_dir={cache_dir}"])
        datamodule = build_datamodule(cfg)
        ctx = build_context(cfg, datamodule, tmp_path / "job", tracking.NullTracker())
        ctx.measure_float = lambda net, name: {}
        net, report = baseline(build_net(cfg, datamodule), ctx, cfg, tracking.NullTracker())
        return {k: v.clone() for k, v in net.state_dict().items()}, report, ctx.tags

    resumed, report, tags = run_baseline(tmp_path / "cache")
    assert "training: resuming after epoch 2" in caplog.text
    assert "waiting for it" not in caplog.text
    whole, report_whole, _ = run_baseline(tmp_path / "whole")
    assert _same(resumed, whole) and report == report_whole == {"epochs": 4}
    assert tags["tinyexp.baseline_cache"] == "miss"


@pytest.mark.slow  # three jobs end to end, 18-35 s on 2 shared cores: the slow tier
def test_a_killed_job_rerun_resumes_and_reports_the_uninterrupted_metrics(tmp_path):
    args = ["trainer.max_epochs=4"]
    jobs = {"killed": start_job(tmp_path, "killed", args, env={KILL_AT_EPOCH: "2"}),
            "whole": start_job(tmp_path, "whole", args, cache="whole-cache")}
    assert jobs.pop("killed").wait(300) == -signal.SIGKILL
    finish(tmp_path, jobs)
    (folder,) = (tmp_path / "cache" / "checkpoints").iterdir()
    assert json.loads((folder / "last.json").read_text())["epoch"] == 2
    finish(tmp_path, {"rerun": start_job(tmp_path, "rerun", args)})
    log = job_log(tmp_path, "rerun")
    assert "baseline: training" in log and "training: resuming after epoch 2" in log
    assert baseline_metrics(tmp_path, "rerun") == baseline_metrics(tmp_path, "whole")
    assert baseline_metrics(tmp_path, "rerun")["baseline/epochs"] == 4
    assert not folder.exists()  # the cached baseline replaced its checkpoints
