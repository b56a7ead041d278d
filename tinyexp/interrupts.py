"""How a job stops when it is told to: Ctrl-C (SIGINT) and SIGTERM become :class:`Interrupted`.

Inside :func:`handle_signals` both signals raise ``Interrupted`` in the main thread, wherever the
job is. It derives from ``BaseException`` so that no ``except Exception`` (Hydra's job runner,
Optuna's trial loop, our own stages) takes it for a failure, and it is not a
``KeyboardInterrupt``, which Lightning's ``trainer.fit`` turns into ``sys.exit(1)``: for any other
``BaseException`` Lightning tears down and re-raises. Lightning also hooks SIGTERM while it fits
and raises a ``SIGTERMException`` (a ``SystemExit`` with status 0) at the next batch; its handler
then calls the one it found installed, ours, which raises before Lightning's exception can.
:func:`interrupted_by` still maps that exception, and ``KeyboardInterrupt``, to ``Interrupted``.

Only the first signal raises: a second Ctrl-C while the job closes its MLflow run is ignored,
so the run cannot be left RUNNING half-closed (SIGKILL still stops it; the next start reaps the
run, see ``tinyexp.tracking.reap_orphans``). :func:`deferred` holds a signal during a short
critical step, such as creating or closing a run, and raises it right after.

A process stopped by SIGKILL (or the out-of-memory killer, or a power cut) runs no code at all.
:func:`process_start` and :func:`process_gone` let the next start tell that the process that
owned a run is gone, even if its pid has been given to another process since.

Standard library only: the CLI imports this before anything heavy.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


class Interrupted(BaseException):
    """The job was stopped by a signal.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        exit_code: the shell's code for a process ended by that signal, 128 + its number
            (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 128 + int(SIGNALS[signal_name])

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"


class _State:
    """What the handler needs to know; one per process (signals reach the main thread only)."""

    owner: int | None = None  # the pid that installed the handler (a forked child is not it)
    depth = 0  # nested handle_signals() blocks
    stopping = False  # an Interrupted was raised: later signals are ignored
    deferring = 0  # nested deferred() blocks
    pending: str | None = None  # the signal held by deferred()


def _handler(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if os.getpid() != _State.owner:
        # A forked child (a DataLoader worker) inherited this handler: behave as Python's
        # defaults would there. Workers expect KeyboardInterrupt on Ctrl-C and leave quietly;
        # the main process stops them when its loader goes away.
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _State.stopping:
        print(f"tinyexp: {name} again: still stopping, please wait (SIGKILL stops at once; the "
              "next start then marks the open MLflow run KILLED)", file=sys.stderr, flush=True)
        return
    if _State.deferring:
        _State.pending = _State.pending or name
        return
    _State.stopping = True
    raise Interrupted(name)


@contextmanager
def handle_signals() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    The previous handlers come back when the block ends. A signal ignored when the block
    starts stays ignored: a shell starts background jobs with SIGINT ignored so that Ctrl-C at
    the terminal leaves them running. Outside the main thread this does nothing (Python lets
    only the main thread set handlers). A ``KeyboardInterrupt`` or Lightning's
    ``SIGTERMException`` leaving the block is re-raised as ``Interrupted``.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS.values()
                if signal.getsignal(signum) != signal.SIG_IGN}
    if _State.depth == 0:
        _State.owner, _State.stopping, _State.pending = os.getpid(), False, None
    _State.depth += 1
    for signum in previous:
        signal.signal(signum, _handler)
    try:
        yield
    except BaseException as err:
        stop = interrupted_by(err)
        if stop is None or stop is err:
            raise
        raise stop from err
    finally:
        _State.depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise :class:`Interrupted`.

    For steps that must not stop halfway (creating a run and entering the code that closes
    it; closing it). Without an active :func:`handle_signals` this does nothing.
    """
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
        name, _State.pending = _State.pending, None
    # Outside ``finally``: an exception of the block itself goes on unchanged.
    if name is not None and not _State.deferring and not _State.stopping:
        _State.stopping = True
        raise Interrupted(name)


def interrupted_by(err: BaseException) -> Interrupted | None:
    """``err`` as an :class:`Interrupted` if it means the job was stopped by a signal, else None.

    Besides ``Interrupted`` itself: ``KeyboardInterrupt`` (SIGINT without
    :func:`handle_signals`), Lightning's ``SIGTERMException``, and the ``sys.exit(1)`` Lightning
    turns a ``KeyboardInterrupt`` into inside ``trainer.fit``.
    """
    if isinstance(err, Interrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return Interrupted("SIGINT")
    if isinstance(err, SystemExit):
        if type(err).__name__ == "SIGTERMException":  # no lightning import: it may be absent
            return Interrupted("SIGTERM")
        if isinstance(err.__context__, KeyboardInterrupt):
            return Interrupted("SIGINT")
        if isinstance(err.__context__, Interrupted):
            return err.__context__
    return None


# ----------------------------------------------------------------------------- process identity


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from field 3 (state) on; None without it."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # Field 2, the command name in parentheses, may itself hold spaces and parentheses.
    return text.rsplit(")", 1)[1].split()


def process_start(pid: int | None = None) -> str | None:
    """When process ``pid`` (default: this one) started, in clock ticks after boot (field 22
    of ``/proc/<pid>/stat``), as text; None where there is no ``/proc`` (macOS) or no process.

    A pid is reused once its process is gone; the pair (pid, start) is not.
    """
    fields = _stat(os.getpid() if pid is None else pid)
    return fields[19] if fields else None


def process_gone(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this machine has ended.

    Args:
        pid: the process id.
        start: its :func:`process_start` when it ran, if known: a live process with that pid
            but another start time is a later one, so the recorded process is gone.
    """
    try:
        os.kill(pid, 0)
        ours = True
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        ours = False
    if not os.path.exists("/proc/self/stat"):
        return False  # no /proc: the pid is all there is to go by
    fields = _stat(pid)
    if fields is None:  # ended since os.kill, or hidden from us (/proc mounted hidepid)
        return ours
    if fields[0] in ("Z", "X"):  # dead, not yet waited for by its parent
        return True
    return start is not None and fields[19] != start
