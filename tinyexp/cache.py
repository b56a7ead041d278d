"""Trained float baselines, cached by what determines their weights.

Jobs that share dataset, architecture, training config and seed get the same baseline: the
first trains it, the others load it. Entries are written atomically (temp file, then rename),
so a killed job never leaves a half-written baseline behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

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


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    """Save trained weights and their training info (info last: it marks the entry complete)."""
    entry = Path(cache_dir) / "baselines" / key
    _atomic_write(entry / "weights.pt", lambda tmp: torch.save(net.state_dict(), tmp))
    _atomic_write(entry / "train.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
