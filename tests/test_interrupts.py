"""Stopping a job: Ctrl-C and SIGTERM end it with exit 130/143, one line and its run KILLED; a
job killed outright leaves its run RUNNING until the next start against the store reaps it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, TINY

from tinyexp import interrupts, tracking
from tinyexp.interrupts import Interrupted, deferred, handle_signals, interrupted_by

# A job that trains until it is stopped: no early stop, epochs without end.
ENDLESS = [*TINY, "trainer.max_epochs=1000000", "callbacks.early_stopping.patience=1000000"]
CURVE = "curves/baseline/val_loss"


@dataclass
class Stopped:
    """How one job ended: its pid, exit code, stderr and run, and the run's status right then."""

    pid: int
    code: int
    stderr: str
    run_id: str
    status: str


def _start(cwd: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT), "CI": "1"}
    # A child of a non-interactive shell may start with SIGINT ignored: restore it, as a
    # terminal would have it.
    return subprocess.Popen(
        # A cache of its own: jobs with one baseline key train it one at a time (the cache's
        # per-key lock), and an endless training never hands it on.
        [sys.executable, "-m", "tinyexp", *ENDLESS, f"cache_dir=cache-{name}"], cwd=cwd, env=env,
        stdout=(cwd / f"{name}.out").open("w"), stderr=(cwd / f"{name}.err").open("w"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _client(cwd: Path):
    return tracking.client_for(f"sqlite:///{cwd / 'mlflow.db'}")  # opens a new store locked


def _run_of(cwd: Path, job: subprocess.Popen, training: bool = True) -> str:
    """The id of the job's run once it exists (and, with ``training``, has logged an epoch)."""
    deadline = time.monotonic() + 300  # a hung child fails the test instead of hanging it
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended with {job.returncode}"
        experiment = (cwd / "mlflow.db").exists() and \
            _client(cwd).get_experiment_by_name("tinyexp")
        for run in _client(cwd).search_runs([experiment.experiment_id]) if experiment else []:
            if run.data.tags.get("tinyexp.pid") == str(job.pid) and (
                    not training or CURVE in run.data.metrics):
                return run.info.run_id
        time.sleep(0.2)
    raise AssertionError("the job never got that far")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[Path, dict[str, Stopped]]:
    """Endless jobs on one store: one killed (SIGKILL) once its run exists, then two started
    together and stopped during training, by SIGINT and by SIGTERM."""
    cwd = tmp_path_factory.mktemp("jobs")
    jobs = {signal.SIGKILL: _start(cwd, "SIGKILL")}
    try:
        runs = {signal.SIGKILL: _run_of(cwd, jobs[signal.SIGKILL], training=False)}
        jobs[signal.SIGKILL].kill()
        jobs[signal.SIGKILL].wait()  # waited for: a dead child is no zombie
        status = {signal.SIGKILL: _client(cwd).get_run(runs[signal.SIGKILL]).info.status}
        later = (signal.SIGINT, signal.SIGTERM)
        jobs.update({sig: _start(cwd, sig.name) for sig in later})
        for sig in later:
            runs[sig] = _run_of(cwd, jobs[sig])
            jobs[sig].send_signal(sig)
        for sig in later:
            jobs[sig].wait(timeout=120)
            status[sig] = _client(cwd).get_run(runs[sig]).info.status
    finally:
        for job in jobs.values():
            if job.poll() is None:
                job.kill()
                job.wait()
    return cwd, {sig.name: Stopped(job.pid, job.returncode,
                                   (cwd / f"{sig.name}.err").read_text(), runs[sig], status[sig])
                 for sig, job in jobs.items()}


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_training_ends_the_run_killed_with_its_exit_code_and_one_line(
        stopped, name, code):
    cwd, jobs = stopped
    job = jobs[name]
    assert job.code == code, job.stderr[-3000:]
    assert "Traceback" not in job.stderr
    lines = [line for line in job.stderr.splitlines() if line.startswith("tinyexp")]
    assert len(lines) == 1 and lines[0].startswith("tinyexp: ") and name in lines[0], lines
    run = _client(cwd).get_run(job.run_id)
    assert job.status == run.info.status == "KILLED"
    assert run.data.tags["tinyexp.interrupted"] == name
    assert run.data.tags["tinyexp.pid"] == str(job.pid)
    assert run.data.tags["tinyexp.host"] == socket.gethostname()


def test_a_killed_job_leaves_its_run_running_until_the_next_start_reaps_it(stopped):
    cwd, jobs = stopped
    job = jobs["SIGKILL"]
    assert job.code == -signal.SIGKILL
    assert job.status == "RUNNING"  # nothing could close it
    # The jobs started after it marked it KILLED.
    run = _client(cwd).get_run(job.run_id)
    assert run.info.status == "KILLED" and "tinyexp.interrupted" not in run.data.tags
    assert run.data.tags["tinyexp.error"] == (
        f"process {job.pid} on {socket.gethostname()} ended without closing the run (killed)")
    logged = [line for name in ("SIGINT", "SIGTERM")
              for line in (cwd / f"{name}.out").read_text().splitlines() if job.run_id in line]
    assert logged and all("marked KILLED" in line for line in logged), logged


# ----------------------------------------------------------------------------- in process


@pytest.fixture
def signals_as_at_a_terminal():
    """SIGINT raising KeyboardInterrupt and SIGTERM ending the process, as in a fresh Python
    started from a terminal (pytest may run with SIGINT ignored); restored afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _signal_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(30)  # a handler that raises ends the sleep at once; one that returns does not


def test_interrupted_names_its_signal_and_the_shells_exit_code():
    assert (Interrupted("SIGINT").exit_code, Interrupted("SIGTERM").exit_code) == (130, 143)
    assert str(Interrupted("SIGTERM")) == "interrupted by SIGTERM"
    assert not isinstance(Interrupted("SIGINT"), Exception | KeyboardInterrupt)


@pytest.mark.usefixtures("signals_as_at_a_terminal")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_inside_the_block_a_signal_raises_interrupted_and_the_handlers_come_back(sig):
    with pytest.raises(Interrupted) as stop, handle_signals():
        _signal_self(sig)
    assert stop.value.signal_name == sig.name
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.usefixtures("signals_as_at_a_terminal")
def test_a_second_signal_while_closing_is_ignored_with_a_note(capsys):
    with pytest.raises(Interrupted), handle_signals():
        try:
            _signal_self(signal.SIGINT)
        finally:  # the cleanup a Ctrl-C starts: a second Ctrl-C must not cut it short
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            closed = True
    assert closed
    assert capsys.readouterr().err.count("still stopping, please wait") == 2


@pytest.mark.usefixtures("signals_as_at_a_terminal")
def test_a_deferred_block_finishes_before_the_signal_is_raised():
    steps = []
    with pytest.raises(Interrupted) as stop, handle_signals():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            steps.append("closed")
        steps.append("after")
    assert steps == ["closed"] and stop.value.signal_name == "SIGTERM"
    with deferred():  # without handle_signals: nothing to hold, nothing raised
        steps.append("plain")


@pytest.mark.usefixtures("signals_as_at_a_terminal")
def test_an_ignored_sigint_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # how a shell starts a background job
    with handle_signals():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


@pytest.mark.usefixtures("signals_as_at_a_terminal")
@pytest.mark.parametrize(("sig", "ends"), [(signal.SIGINT, "exit 7"),
                                           (signal.SIGTERM, "signal 15")])
def test_a_forked_child_such_as_a_dataloader_worker_keeps_pythons_default_behaviour(sig, ends):
    with handle_signals():
        pid = os.fork()
        if pid == 0:  # the child: Ctrl-C is a KeyboardInterrupt, SIGTERM ends it
            try:
                _signal_self(sig)
            except KeyboardInterrupt:
                os._exit(7)
            except BaseException:
                os._exit(8)
            os._exit(9)
        _, status = os.waitpid(pid, 0)
    assert (f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status)
            else f"signal {os.WTERMSIG(status)}") == ends


@pytest.mark.usefixtures("signals_as_at_a_terminal", "single_thread")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_lightning_fit_comes_out_as_interrupted(sig):
    # Lightning turns a KeyboardInterrupt into sys.exit(1) and SIGTERM into its own
    # SIGTERMException (exit status 0): neither may reach the run's status or the exit code.
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class SignalAtEpoch2(pl.Callback):
        def on_train_epoch_end(self, trainer, _):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), sig)

    trainer = pl.Trainer(max_epochs=1000, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SignalAtEpoch2()])
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    with pytest.raises(Interrupted) as stop, handle_signals():
        trainer.fit(Tiny(), data)
    assert stop.value.signal_name == sig.name and trainer.current_epoch < 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_what_counts_as_interrupted():
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    assert interrupted_by(SIGTERMException()).signal_name == "SIGTERM"
    assert interrupted_by(KeyboardInterrupt()).signal_name == "SIGINT"
    try:  # what Lightning's fit does with a Ctrl-C it catches
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as err:
        assert interrupted_by(err).signal_name == "SIGINT"
    for other in (SystemExit(1), RuntimeError("x"), GeneratorExit()):
        assert interrupted_by(other) is None


# ----------------------------------------------------------------------------- process identity


def test_a_process_is_gone_when_it_ended_or_its_pid_belongs_to_a_later_one():
    assert not interrupts.process_gone(os.getpid(), interrupts.process_start())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while interrupts._stat(child.pid)[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert interrupts.process_gone(child.pid)  # ended, not yet waited for (a zombie)
    child.wait()
    assert interrupts.process_gone(child.pid)  # ended and reaped
    # Our pid with another start time: a reused pid, the recorded process is gone.
    start = int(interrupts.process_start())
    assert interrupts.process_gone(os.getpid(), str(start - 1))
    assert not interrupts.process_gone(os.getpid(), None)  # no start time: the pid decides
