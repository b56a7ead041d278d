"""Trained float baselines, cached by what determines their weights.

Jobs that share dataset, architecture, training config and seed get the same baseline: the
first trains it, the others load it. Entries are written atomically
(:func:`tinyexp.files.atomic_write`), so a killed job never leaves a half-written baseline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tinyexp.files import atomic_write

# Bump when the training code changes what a config produces: old entries stop matching.
CACHE_VERSION = 1


def baseline_key(cfg: DictConfig) -> str:
    """Hash of everything that decides the baseline's weights."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True)
             for k in ("dataset", "arch", "trainer", "optim", "callbacks") if k in cfg}
    parts["seed"] = cfg.seed
    parts["version"] = CACHE_VERSION
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load(cache_dir: str | Path, key: str, net: nn.Module) -> dict[str, Any] | None:
    """Load cached weights into ``net``; return the training info, or None on a miss."""
    entry = Path(cache_dir) / "baselines" / key
    weights, info = entry / "weights.pt", entry / "train.json"
    if not (weights.is_file() and info.is_file()):
        return None
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    return json.loads(info.read_text())


def store(cache_dir: str | Path, key: str, net: nn.Module, info: dict[str, Any]) -> None:
    """Save trained weights and their training info (info last: it marks the entry complete).

    ``info`` is what :func:`tinyexp.lit.train` returned, loss ``curve`` included, so a later
    hit can log the curve it did not train. Python's JSON keeps NaN and infinity (as ``NaN``,
    ``Infinity``): a diverged epoch or a training without validation round-trips as it was.
    """
    entry = Path(cache_dir) / "baselines" / key
    atomic_write(entry / "weights.pt", lambda tmp: torch.save(net.state_dict(), tmp))
    atomic_write(entry / "train.json", json.dumps(info, indent=2))
