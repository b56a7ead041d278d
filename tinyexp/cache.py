"""Trained float baselines, cached by what determines their weights.

Jobs that share dataset, architecture, training config and seed get the same baseline: the
first trains it, the others load it, also when they start together: :func:`load_or_train` holds
the key's lock from the lookup until the entry is stored, so a second job waits for the first
and then loads its entry. Entries are written atomically (:func:`tinyexp.files.atomic_write`),
the training info last with the SHA-256 of the weights: an entry whose info is missing or
unreadable, or whose weights do not match their checksum or the network, is reported with its
path, discarded and retrained. A training in progress keeps its end-of-epoch checkpoints under
``checkpoints/<key>/`` (``trainer.resume=auto``), where a rerun resumes from; they go once the
entry is stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tinyexp.files import atomic_write, file_lock

log = logging.getLogger(__name__)

# Bump when the training code changes what a config produces: old entries stop matching.
# 2: entries carry the weights' checksum (and the baseline's curve).
CACHE_VERSION = 2
CHECKSUM = "weights_sha256"


def baseline_key(cfg: DictConfig) -> str:
    """Hash of everything that decides the baseline's weights."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True)
             for k in ("dataset", "arch", "trainer", "optim", "callbacks") if k in cfg}
    # Whether a killed training resumes changes no weight (tests/test_resume.py).
    parts.get("trainer", {}).pop("resume", None)
    parts["seed"] = cfg.seed
    parts["version"] = CACHE_VERSION
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_or_train(cache_dir: str | Path, key: str, net: nn.Module,
                  train: Callable[[Path | None], dict[str, Any]], *,
                  resume: bool = True) -> tuple[dict[str, Any], bool]:
    """The baseline of ``key``: loaded into ``net`` from the cache, or trained and stored.

    The key's lock is held from the lookup until the trained entry is stored: a job that asks
    for a key another job is training waits (logging that, and for how long) and then loads
    that job's entry instead of training a second copy. If the holder dies, the system releases
    its lock, the waiter finds no entry and trains itself (resuming from the dead job's last
    checkpoint with ``resume``).

    Args:
        cache_dir: the cache's folder (``cfg.cache_dir``).
        key: :func:`baseline_key` of the config.
        net: the untrained network; trained or loaded in place.
        train: trains ``net`` and returns its training info (:func:`tinyexp.lit.train`'s);
            called with the folder for its end-of-epoch checkpoints (None without ``resume``).
        resume: keep checkpoints under ``checkpoints/<key>/`` while training, and resume from
            the ones a killed job left there.

    Returns:
        The training info and whether it came from the cache.
    """
    with _held(cache_dir, key):
        info = _read(cache_dir, key, net)
        if info is not None:
            return info, True
        checkpoints = Path(cache_dir) / "checkpoints" / key
        info = train(checkpoints if resume else None)
        _write(cache_dir, key, net, info)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the entry replaces them
    return info, False


def load(cache_dir: str | Path, key: str, net: nn.Module) -> dict[str, Any] | None:
    """Load cached weights into ``net``; return the training info, or None on a miss.

    A damaged or partial entry (info missing or unreadable, weights truncated, not matching
    their checksum or ``net``) is a miss too: it is logged with its path and removed, so the
    baseline is retrained and stored again instead of failing every later run.
    """
    entry = Path(cache_dir) / "baselines" / key
    if not ((entry / "weights.pt").exists() or (entry / "train.json").exists()):
        return None
    with file_lock(_lock_path(cache_dir, key)):  # not while another job writes it
        return _read(cache_dir, key, net)


def _read(cache_dir: str | Path, key: str, net: nn.Module) -> dict[str, Any] | None:
    """:func:`load`, with the key's lock held by the caller."""
    entry = Path(cache_dir) / "baselines" / key
    weights, info_file = entry / "weights.pt", entry / "train.json"
    if not (weights.exists() or info_file.exists()):
        return None
    try:
        info = json.loads(info_file.read_text())
        expected = info.pop(CHECKSUM)
        data = weights.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("weights.pt does not match its checksum")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state.items()} != shapes:
            raise ValueError("weights.pt holds another network")
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError,
            pickle.UnpicklingError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        log.warning("baseline cache: %s is damaged or incomplete (%s); discarding it and "
                    "retraining the baseline", entry, reason)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    net.load_state_dict(state)
    net.eval()
    return info


def store(cache_dir: str | Path, key: str, net: nn.Module, info: dict[str, Any]) -> None:
    """Save trained weights and their training info (info last: it marks the entry complete).

    ``info`` is what :func:`tinyexp.lit.train` returned, loss ``curve`` included, so a later
    hit can log the curve it did not train. Python's JSON keeps NaN and infinity (as ``NaN``,
    ``Infinity``): a diverged epoch or a training without validation round-trips as it was.
    """
    with file_lock(_lock_path(cache_dir, key)):
        _write(cache_dir, key, net, info)


def _write(cache_dir: str | Path, key: str, net: nn.Module, info: dict[str, Any]) -> None:
    """:func:`store`, with the key's lock held by the caller."""
    entry = Path(cache_dir) / "baselines" / key
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    data = buffer.getvalue()
    atomic_write(entry / "weights.pt", data)
    info = {**info, CHECKSUM: hashlib.sha256(data).hexdigest()}
    atomic_write(entry / "train.json", json.dumps(info, indent=2))


@contextmanager
def _held(cache_dir: str | Path, key: str) -> Iterator[None]:
    """The key's lock for the block; if another job holds it, say so, wait, say how long."""
    path = _lock_path(cache_dir, key)
    busy = _held_elsewhere(path)
    if busy:
        log.info("baseline cache: another job is training (or reading) baseline %s; "
                 "waiting for it", key)
    start = time.monotonic()
    with file_lock(path):
        if busy:
            log.info("baseline cache: waited %.1f s for baseline %s", time.monotonic() - start,
                     key)
        yield


def _held_elsewhere(path: Path) -> bool:
    """Whether another process holds the lock now (only to log the wait: it may be released
    a moment later). False where the file system has no ``flock``: ``file_lock`` decides."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _lock_path(cache_dir: str | Path, key: str) -> Path:
    """The lock file of one entry (beside the entries, so listing them lists baselines only)."""
    return Path(cache_dir) / ".locks" / f"{key}.lock"
