"""Jobs that want the same baseline at once: one trains it, the others wait and load its entry;
a job that dies holding the key's lock blocks nobody; measuring happens without the lock."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from jobs import GATE, baseline_metrics, finish, job_log, start_job, wait_until
from support import ROOT

from tinyexp import cache

pytestmark = pytest.mark.usefixtures("single_thread")


class _Training:
    """A stand-in for the baseline's training: sets known weights, optionally after a gate."""

    def __init__(self, net, gate: threading.Event | None = None) -> None:
        self.net, self.gate = net, gate
        self.calls: list = []

    def __call__(self, checkpoints):
        self.calls.append(checkpoints)
        if self.gate is not None:
            assert self.gate.wait(30)
        with torch.no_grad():
            for p in self.net.parameters():
                p.fill_(0.5)
        return {"epochs": 3, "curve": {"train_loss": [1.0, 0.5, 0.25], "val_loss": [1, 1, 1]}}


def _in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; ``.result`` holds what it returned (or raised)."""
    thread = threading.Thread(target=lambda: setattr(thread, "result", _call(fn, args, kwargs)),
                              daemon=True)
    thread.start()
    return thread


def _call(fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - handed to the test thread
        return err


def test_a_job_asking_for_a_baseline_being_trained_waits_and_loads_it(tmp_path, caplog):
    caplog.set_level("INFO", logger="tinyexp.cache")
    first_net, second_net = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    gate = threading.Event()
    first, second = _Training(first_net, gate), _Training(second_net)
    holder = _in_thread(cache.load_or_train, tmp_path, "k", first_net, first)
    wait_until(lambda: first.calls)  # training, the key's lock held
    waiter = _in_thread(cache.load_or_train, tmp_path, "k", second_net, second)
    wait_until(lambda: "another job is training (or reading) baseline k; waiting" in caplog.text)
    time.sleep(0.2)
    assert waiter.is_alive() and not second.calls  # blocked, not training a second copy
    gate.set()
    holder.join(30), waiter.join(30)
    (info1, hit1), (info2, hit2) = holder.result, waiter.result
    assert (hit1, hit2) == (False, True) and second.calls == []
    assert info2 == info1
    assert all(torch.equal(a, b) for a, b in zip(first_net.state_dict().values(),
                                                 second_net.state_dict().values(), strict=True))
    assert re.search(r"waited \d+\.\d s for baseline k", caplog.text)
    # The checkpoints the training was offered are gone once its entry is stored.
    assert first.calls == [tmp_path / "checkpoints" / "k"]
    assert not (tmp_path / "checkpoints" / "k").exists()


_HOLD_LOCK = """
import sys, time
from tinyexp.files import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_job_killed_holding_the_lock_blocks_nobody(tmp_path, caplog):
    # A real process takes the key's lock as a training job does, and is killed with SIGKILL
    # while another waits for it: the system releases the lock, the waiter finds no entry and
    # trains, from the checkpoints the dead job left (resume).
    caplog.set_level("INFO", logger="tinyexp.cache")
    lock = cache._lock_path(tmp_path, "k")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "checkpoints" / "k").mkdir(parents=True)  # what a dead training leaves
        net = torch.nn.Linear(2, 1)
        training = _Training(net)
        waiter = _in_thread(cache.load_or_train, tmp_path, "k", net, training)
        wait_until(lambda: "waiting for it" in caplog.text)
        assert waiter.is_alive() and not training.calls
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    waiter.join(30)
    assert not waiter.is_alive() and waiter.result[1] is False
    assert training.calls == [tmp_path / "checkpoints" / "k"]
    # And without resume the training gets no checkpoint folder.
    other = _Training(torch.nn.Linear(2, 1))
    assert cache.load_or_train(tmp_path, "k2", torch.nn.Linear(2, 1), other, resume=False)[1] \
        is False
    assert other.calls == [None]


def test_the_baseline_is_measured_without_holding_the_lock(compose_cfg, tmp_path):
    from tinyexp import tracking
    from tinyexp.pipeline import baseline, build_context, build_datamodule, build_net

    cfg = compose_cfg(["trainer=smoke", "dataset.train_steps=640", "dataset.test_steps=640",
                       "measure.latency_warmup=1", "measure.latency_runs=5",
                       f"cache_dir={tmp_path}"])
    datamodule = build_datamodule(cfg)
    ctx = build_context(cfg, datamodule, tmp_path / "job", tracking.NullTracker())
    locked = []
    lock = cache._lock_path(tmp_path, cache.baseline_key(cfg))
    # A second handle on the lock conflicts with the one the baseline holds, if it holds it.
    ctx.measure_float = lambda net, name: locked.append(cache._held_elsewhere(lock)) or {}
    for _ in range(2):  # trained, then loaded
        baseline(build_net(cfg, datamodule), ctx, cfg, tracking.NullTracker())
    assert locked == [False, False]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# ----------------------------------------------------------------------------- real jobs


@pytest.mark.slow  # two jobs end to end, 13-26 s on 2 shared cores: the slow tier
def test_two_jobs_started_together_train_the_baseline_once(tmp_path):
    # Both are held at their training's start until the gate opens: the second is sure to
    # arrive while the first trains.
    gate = tmp_path / "gate"
    jobs = {name: start_job(tmp_path, name, env={GATE: str(gate)}) for name in ("a", "b")}
    try:
        wait_until(lambda: any("waiting for it" in job_log(tmp_path, n) for n in jobs),
                   timeout=240)
    finally:
        gate.touch()
    finish(tmp_path, jobs)
    logs = {n: job_log(tmp_path, n) for n in jobs}
    trained = [n for n, text in logs.items() if "baseline: training" in text]
    assert len(trained) == 1, logs
    (waited,) = set(jobs) - set(trained)
    assert "baseline: reusing cached weights" in logs[waited]
    assert re.search(r"waited \d+\.\d s for baseline", logs[waited])
    assert len(list(tmp_path.glob("gate.started.*"))) == 1  # one training started at all
    assert baseline_metrics(tmp_path, "a") == baseline_metrics(tmp_path, "b")
