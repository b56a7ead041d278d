"""Console table of one run, and the one number formatter every printed table uses.

The change against the baseline follows :mod:`tinyexp.measure.changes`: a task metric shows
its ``<stage>/<metric>_delta`` (stage - baseline, ``-0.005556``), a cost its
``<stage>/<cost>_reduction_pct`` in words (``73.2% smaller``, ``40.6% slower``), so the
printed number is the logged metric and its direction cannot be misread.
"""

from __future__ import annotations

import math

from tinyexp.measure import changes

# Row order: task metrics first, then cost.
_TASK_METRICS = ("mse", "accuracy", "recall", "f1", "far", "mar", "roc_auc")
_COSTS = ("params", "macs", "size_bytes", "weight_bytes", "flash_bytes", "ram_bytes",
          "latency_ms", "latency_p90_ms")


def fmt_number(value: float | None, *, signed: bool = False, decimals: int | None = None) -> str:
    """A number for display; ``-`` if missing or not finite.

    Args:
        value: the number.
        signed: print ``+`` on positive numbers (a delta); zero stays ``0``.
        decimals: fixed decimals (``67.7``); by default ``12,648`` for large whole numbers
            and 4 significant digits otherwise (``0.9833``, ``-0.005556``).
    """
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        value = 0.0  # no sign on no change, nor -0
    sign = "+" if signed and value != 0 else ""
    if decimals is not None:
        return f"{value:{sign},.{decimals}f}"
    if float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):{sign},}"
    return f"{value:{sign}.4g}"


def fmt_reduction(pct: float | None, cost: str, decimals: int = 1) -> str:
    """A cost's ``reduction_pct`` in words: ``67.7% smaller`` (positive), ``12.0% larger``
    (negative); ``faster``/``slower`` for latencies; ``-`` if missing."""
    if pct is None or not math.isfinite(pct):
        return "-"
    if pct == 0:
        return f"{fmt_number(0.0, decimals=decimals)}%"
    words = ("faster", "slower") if cost.startswith("latency") else ("smaller", "larger")
    return f"{fmt_number(abs(pct), decimals=decimals)}% {words[pct < 0]}"


def stage_change(metrics: dict[str, float], stage: str, name: str) -> float | None:
    """The change of ``stage`` against the baseline the table prints for ``name``: the
    metric's ``<stage>/<name>_delta`` or the cost's ``<stage>/<reduction>`` from ``metrics``,
    computed by :mod:`tinyexp.measure.changes` when the run did not log one."""
    base, value = metrics.get(f"baseline/{name}"), metrics.get(f"{stage}/{name}")
    if name in _TASK_METRICS:
        return metrics.get(f"{stage}/{name}_delta", changes.delta(base, value))
    key = f"{stage}/{changes.REDUCTIONS.get(name, '')}"
    return metrics[key] if key in metrics else changes.reduction_pct(base, value)


def stage_table(metrics: dict[str, float], title: str = "") -> str:
    """Format flat ``stage/metric`` values as a table: one column per stage, then one per
    stage after the baseline with its delta (task metrics) or reduction (costs)."""
    stages: list[str] = []
    for key in metrics:
        stage = key.split("/", 1)[0]
        # a stage measures a network (params); other prefixes (layers/...) are analyses
        if stage not in stages and f"{stage}/params" in metrics:
            stages.append(stage)
    compared = [s for s in stages if s != "baseline"] if "baseline" in stages else []
    names = [m for m in (*_TASK_METRICS, *_COSTS) if any(f"{s}/{m}" in metrics for s in stages)]
    header = ["metric", *stages] + [f"{s}: delta / reduction" for s in compared]
    rows = [header]
    for name in names:
        row = [name] + [fmt_number(metrics.get(f"{s}/{name}")) for s in stages]
        for stage in compared:
            change = stage_change(metrics, stage, name)
            row.append(fmt_number(change, signed=True) if name in _TASK_METRICS
                       else fmt_reduction(change, name))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths, strict=True)))) for r in rows]
    rule = "-" * len(lines[0])
    return "\n".join([title, rule, lines[0], rule, *lines[1:], rule] if title else
                     [rule, lines[0], rule, *lines[1:], rule])
