"""Latency timing takes a host-wide lock, and every timing records how it was taken.

Two processes timing at once take turns (their timed windows, read off a shared clock, do not
overlap, and the second waited); with the lock off nothing waits and the run says the timing
was not exclusive; a bad ``measure.latency_lock`` is a one-line error naming the key. No test
depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from support import ROOT, TINY, compose
from torch import nn

from tinyexp.checks import ConfigError
from tinyexp.config import validate
from tinyexp.measure.cost import export_onnx, latency_ms
from tinyexp.measure.latency_lock import exclusive

pytestmark = pytest.mark.usefixtures("single_thread")

RECORD = ("latency_lock_wait_s", "latency_exclusive", "latency_threads", "latency_load_1m")

# One timing job. The first session.run (inside the lock) holds on until the other job is
# blocked on the same lock (/proc/locks lists it as a waiter) or has finished: the two jobs
# really do contend, on a machine of any speed. The window of timed work is read off
# CLOCK_MONOTONIC, which every process on the host shares.
CHILD = """
import json, os, sys, time
from pathlib import Path
import numpy as np
from tinyexp.measure import cost

model, lock, me, other = sys.argv[1:5]
folder, real, stamps = Path(lock).parent, cost.ort_session, []

def other_blocked_or_done():
    if (folder / f"{other}.done").exists():
        return True
    inode = f":{os.stat(lock).st_ino} "
    return any("->" in line and inode in line for line in open("/proc/locks"))

def stamped_session(path, threads=1):
    session = real(path, threads)

    class Stamped:
        def get_inputs(self):
            return session.get_inputs()

        def run(self, *args, **kwargs):
            if not stamps:
                stamps.append(time.monotonic())
                deadline = time.monotonic() + 60  # a guard, not a measurement
                while not other_blocked_or_done() and time.monotonic() < deadline:
                    time.sleep(0.005)
            out = session.run(*args, **kwargs)
            stamps.append(time.monotonic())
            return out
    return Stamped()

cost.ort_session = stamped_session
(folder / f"{me}.ready").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
metrics = cost.latency_ms(Path(model), np.zeros((1, 16), np.float32), warmup=2, runs=5,
                          lock=lock)
(folder / f"{me}.json").write_text(json.dumps({"start": stamps[0], "end": stamps[-1],
                                               **metrics}))
(folder / f"{me}.done").touch()
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return export_onnx(nn.Linear(16, 4), torch.randn(1, 16), folder / "lin.onnx", opset=17)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_two_processes_timing_at_once_take_turns(model, tmp_path):
    lock = tmp_path / "latency.lock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-c", CHILD, str(model), str(lock), me, other],
                             env=env, stderr=subprocess.PIPE, text=True)
            for me, other in (("a", "b"), ("b", "a"))]
    try:
        while not all((tmp_path / f"{n}.ready").exists() for n in "ab"):
            assert all(j.poll() is None for j in jobs), [j.communicate()[1] for j in jobs]
            threading.Event().wait(0.01)
        (tmp_path / "go").touch()  # both are imported: they reach the lock together
        errors = [j.communicate(timeout=180)[1] for j in jobs]
    finally:
        for j in jobs:
            j.kill()
    assert [j.returncode for j in jobs] == [0, 0], errors
    first, second = sorted((json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab"),
                           key=lambda r: r["start"])
    assert first["end"] <= second["start"], "the timed windows overlap"
    assert second["latency_lock_wait_s"] > 0
    assert first["latency_exclusive"] == second["latency_exclusive"] == 1.0
    assert first["latency_threads"] == second["latency_threads"] == 1.0


def test_without_the_lock_nothing_waits_and_the_timing_is_not_exclusive(model, tmp_path):
    example = np.zeros((1, 16), np.float32)
    lock = str(tmp_path / "latency.lock")
    done = {}
    with exclusive(lock) as held:  # another job holds the lock the whole time
        assert held["latency_exclusive"] == 1.0
        worker = threading.Thread(target=lambda: done.update(
            latency_ms(model, example, warmup=1, runs=5, lock=None)))
        worker.start()
        worker.join(timeout=120)  # a hang guard: with the lock it would wait forever
        assert not worker.is_alive(), "latency_ms with lock=None waited for the lock"
    assert done["latency_exclusive"] == 0.0
    assert done["latency_lock_wait_s"] == 0.0
    assert done["latency_threads"] == 1.0
    assert done["latency_load_1m"] >= 0
    assert 0 < done["latency_ms"] <= done["latency_p90_ms"]


def test_a_lock_that_cannot_be_opened_times_without_it_and_says_so(model, tmp_path, caplog):
    (tmp_path / "file").write_text("")
    cost = latency_ms(model, np.zeros((1, 16), np.float32), warmup=1, runs=5,
                      lock=str(tmp_path / "file" / "latency.lock"))
    assert cost["latency_exclusive"] == 0.0
    assert "timing without it" in caplog.text


def test_the_measurer_passes_measure_latency_lock_on(model, tmp_path):
    """What each stage measures (Measurer) follows the config: null means no lock."""
    from tinyexp.measure.network import Measurer

    class Data:
        task = "classification"

        def example_input(self):
            return torch.zeros(1, 16)

        def test_arrays(self):
            return np.zeros((4, 16), np.float32), np.array([0, 1, 2, 3])

    for lock, exclusive_ in ((None, 0.0), (str(tmp_path / "job.lock"), 1.0)):
        settings = OmegaConf.create({"opset": 17, "latency_warmup": 1, "latency_runs": 5,
                                     "latency_lock": lock})
        metrics = Measurer(Data(), None, settings).float_network(nn.Linear(16, 4),
                                                                 tmp_path / "m.onnx")
        assert metrics["latency_exclusive"] == exclusive_, lock


def test_a_smoke_run_records_how_latency_was_timed(tmp_path):
    from tinyexp.pipeline import run

    cfg = compose([*TINY, "logger=none", f"cache_dir={tmp_path / 'cache'}",
                   f"+output_dir={tmp_path / 'out'}"])
    metrics = run(cfg)["metrics"]
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for stage in ("baseline", "pruned"):
        for name in RECORD:
            assert f"{stage}/{name}" in metrics and f"{stage}/{name}" in written, name
        assert metrics[f"{stage}/latency_exclusive"] == 1.0  # the default lock
        assert metrics[f"{stage}/latency_threads"] == 1.0
        assert metrics[f"{stage}/latency_lock_wait_s"] >= 0


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("value", ["5", "true", "''", "relative/latency.lock", "[1,2]",
                                   "{a: 1}", "<folder>", "<under a file>"])
def test_a_bad_latency_lock_is_one_line_naming_the_key(value, tmp_path):
    (tmp_path / "file").write_text("")
    value = value.replace("<folder>", str(tmp_path)).replace(
        "<under a file>", str(tmp_path / "file" / "latency.lock"))
    with pytest.raises(ConfigError) as err:
        validate(compose([f"measure.latency_lock={value}"]))
    assert err.value.key == "measure.latency_lock"
    assert str(err.value).startswith("measure.latency_lock: ")
    assert "\n" not in str(err.value)


def test_null_or_an_absolute_path_is_accepted_and_the_file_made_ready(tmp_path):
    assert validate(compose(["measure.latency_lock=null"]))["measure"].latency_lock is None
    lock = tmp_path / "new" / "folder" / "latency.lock"
    assert validate(compose([f"measure.latency_lock={lock}"]))["measure"].latency_lock == str(lock)
    assert lock.is_file()
    assert validate(compose([]))["measure"].latency_lock == "/tmp/tinyexp-latency.lock"
