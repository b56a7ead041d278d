"""Trained float baselines, cached by what determines their weights.

Jobs that share dataset, architecture, training config and seed get the same baseline: the
first trains it, the others load it. Entries are written atomically
(:func:`tinyexp.files.atomic_write`) under a per-key lock, the training info last with the
SHA-256 of the weights: an entry whose info is missing or unreadable, or whose weights do not
match their checksum or the network, is reported with its path, discarded and retrained.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import shutil
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
    parts["seed"] = cfg.seed
    parts["version"] = CACHE_VERSION
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load(cache_dir: str | Path, key: str, net: nn.Module) -> dict[str, Any] | None:
    """Load cached weights into ``net``; return the training info, or None on a miss.

    A damaged or partial entry (info missing or unreadable, weights truncated, not matching
    their checksum or ``net``) is a miss too: it is logged with its path and removed, so the
    baseline is retrained and stored again instead of failing every later run.
    """
    entry = Path(cache_dir) / "baselines" / key
    weights, info_file = entry / "weights.pt", entry / "train.json"
    if not (weights.exists() or info_file.exists()):
        return None
    with file_lock(_lock_path(cache_dir, key)):  # not while another job writes it
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
    entry = Path(cache_dir) / "baselines" / key
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    data = buffer.getvalue()
    with file_lock(_lock_path(cache_dir, key)):
        atomic_write(entry / "weights.pt", data)
        info = {**info, CHECKSUM: hashlib.sha256(data).hexdigest()}
        atomic_write(entry / "train.json", json.dumps(info, indent=2))


def _lock_path(cache_dir: str | Path, key: str) -> Path:
    """The lock file of one entry (beside the entries, so listing them lists baselines only)."""
    return Path(cache_dir) / ".locks" / f"{key}.lock"
