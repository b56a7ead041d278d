"""Real jobs steered from a test: :class:`JobHooks`, a callback that holds a job's training at its
start until a file appears or kills the process (SIGKILL) when an epoch starts, as the
environment says; and the helpers that start such jobs and read what they did.

Without those variables the callback does nothing, so a rerun of the same config (the same
baseline key: the callback is part of it) trains undisturbed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from support import ROOT

GATE = "TINYEXP_TEST_GATE"  # a path: write <path>.started.<pid>, then wait until <path> exists
KILL_AT_EPOCH = "TINYEXP_TEST_KILL_AT_EPOCH"  # k: SIGKILL when epoch k+1 starts (k epochs done)


class JobHooks(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gate = os.environ.get(GATE)
        if not gate:
            return
        Path(f"{gate}.started.{os.getpid()}").touch()
        deadline = time.monotonic() + 120  # a test that never opens the gate still ends
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if os.environ.get(KILL_AT_EPOCH) == str(trainer.current_epoch):
            os.kill(os.getpid(), signal.SIGKILL)


# A job as small as the CLI runs one: a baseline (trainer=smoke) measured, no pruning, no MLflow;
# JobHooks in its callbacks.
JOB = ["trainer=smoke", "dataset.train_steps=640", "dataset.test_steps=640", "prune=none",
       "logger=none", "measure.latency_warmup=1", "measure.latency_runs=5",
       "+callbacks.hooks._target_=jobs.JobHooks"]


def start_job(cwd: Path, name: str, args: list[str] | tuple = (), env: dict | None = None,
              cache: str = "cache") -> subprocess.Popen:
    """``python -m tinyexp JOB ARGS cache_dir=CACHE`` in ``cwd``, in the folder ``cwd/name``;
    its console goes to ``cwd/name.out``. The job computes on one thread, as the tests' own
    process does (``single_thread``): a training split across threads sums in another order, so
    a job's weights could only be compared with the test's bit for bit on one thread."""
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "CI": "1",
                "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
                **(env or {})}
    with open(cwd / f"{name}.out", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "tinyexp", *JOB, *args,
                                 f"cache_dir={cache}", f"hydra.run.dir={name}"], cwd=cwd,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT)


def finish(cwd: Path, jobs: dict[str, subprocess.Popen]) -> None:
    """Wait for each job; each must succeed."""
    for name, job in jobs.items():
        assert job.wait(300) == 0, (cwd / f"{name}.out").read_text()[-3000:]


def job_log(cwd: Path, name: str) -> str:
    """A job's log so far (``<its folder>/tinyexp.log``)."""
    path = cwd / name / "tinyexp.log"
    return path.read_text() if path.exists() else ""


def baseline_metrics(cwd: Path, name: str) -> dict[str, float]:
    """The ``baseline/*`` metrics a job wrote, but the latencies (timings differ run to run)."""
    metrics = json.loads((cwd / name / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith("baseline/") and "latency" not in k}


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
