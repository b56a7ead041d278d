"""A host-wide lock around latency timing, so that jobs side by side never time at once.

The jobs of a parallel launcher (joblib workers, several workers of one search on one machine)
share the host's cores, caches and memory bandwidth: a job timing its model while another times
its own measures both. Every timing takes an exclusive lock on one file
(``measure.latency_lock``, null: no lock) for the warm-up and the timed runs only; training,
export and quantization still run side by side. :func:`exclusive` yields what the run records
about its timing: how long it waited for the lock and whether it held it. The load average at
the start of timing (:mod:`tinyexp.measure.cost`) says how busy the rest of the host was.

Only the standard library is imported: the config schema opens the lock file to check it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# /tmp, not $TMPDIR: schedulers (Slurm, PBS) give each job its own TMPDIR, and a lock in it
# would be held by one job only. Jobs in containers share it through a mounted volume.
DEFAULT_LATENCY_LOCK = "/tmp/tinyexp-latency.lock"


def open_lock(path: str) -> int:
    """A read-only descriptor on the lock file, created (and its folder) if missing.

    ``flock`` needs no write access, so a lock file another user's jobs created serves this
    user's too; opening it without ``O_CREAT`` also passes Linux's ``fs.protected_regular``,
    which refuses ``O_CREAT`` on another user's file in a sticky folder such as /tmp.

    Raises:
        OSError: the folder cannot be created, the file cannot be opened, or it is no file.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            os.fchmod(fd, 0o644)  # readable by every user's jobs, whatever the umask
        except FileExistsError:  # another job created it in between
            fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(21, "not a regular file", path)
    return fd


@contextmanager
def exclusive(path: str | None) -> Iterator[dict[str, float]]:
    """Hold the lock on ``path`` while the ``with`` block runs (no lock when ``path`` is None).

    Yields the record of the wait, which the block may add to: ``latency_lock_wait_s``
    (seconds spent waiting for another job's timing to end) and ``latency_exclusive`` (1.0
    when the lock was held, 0.0 when timing ran without it: disabled, or the file could not be
    opened). ``flock``, not ``fcntl``'s record locks: two sessions in one process exclude each
    other too, and the kernel releases the lock when a holder dies.
    """
    record = {"latency_lock_wait_s": 0.0, "latency_exclusive": 0.0}
    fd = None
    if path is not None:
        try:
            fd = open_lock(path)
        except OSError as err:
            log.warning("latency: cannot open the lock %s (%s); timing without it, "
                        "latency_exclusive=0", path, err)
    if fd is None:
        yield record
        return
    import fcntl

    try:
        start = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("latency: waiting for %s (another job is timing)", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        record.update(latency_lock_wait_s=time.monotonic() - start, latency_exclusive=1.0)
        yield record
    finally:
        os.close(fd)  # releases the lock
