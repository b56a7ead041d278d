"""Change against the baseline: one definition, one sign, used by metrics, console and report.

* Costs: ``<stage>/<cost>_reduction_pct`` = 100 x (baseline - stage) / baseline, so **positive
  means smaller or faster** (``param_reduction_pct: 67.7`` = 67.7% fewer parameters).
* Task metrics: ``<stage>/<metric>_delta`` = stage - baseline, in the metric's own unit
  (``f1_delta: -0.05`` = F1 fell by 0.05; for mse a positive delta is worse).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# Cost measures and the name of their reduction (the metric keys users and sweeps rely on).
REDUCTIONS = {"params": "param_reduction_pct", "macs": "macs_reduction_pct",
              "size_bytes": "size_reduction_pct", "latency_ms": "latency_reduction_pct"}


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def reduction_pct(base: float | None, value: float | None) -> float | None:
    """Percent saved against ``base`` (positive = smaller); None if either is missing or 0."""
    if not _finite(base, value) or base == 0:
        return None
    return 100.0 * (base - value) / base


def delta(base: float | None, value: float | None) -> float | None:
    """``value - base``; None if either is missing or not finite."""
    if not _finite(base, value):
        return None
    return value - base


def stage_changes(metrics: dict[str, float], stage: str,
                  task_metrics: Iterable[str]) -> dict[str, float]:
    """The ``<stage>/*_reduction_pct`` and ``<stage>/*_delta`` metrics of one stage."""
    out = {}
    for name, key in REDUCTIONS.items():
        value = reduction_pct(metrics.get(f"baseline/{name}"), metrics.get(f"{stage}/{name}"))
        if value is not None:
            out[f"{stage}/{key}"] = value
    for name in task_metrics:
        base, value = metrics.get(f"baseline/{name}"), metrics.get(f"{stage}/{name}")
        if base is not None and value is not None:
            out[f"{stage}/{name}_delta"] = value - base
    return out
