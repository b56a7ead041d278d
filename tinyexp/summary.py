"""Console table of one run, and the one number formatter every printed table uses.

The change against the baseline follows :mod:`tinyexp.measure.changes`: a task metric shows
its ``<stage>/<metric>_delta`` (stage - baseline, ``-0.005556``), a cost its
``<stage>/<cost>_reduction_pct`` in words (``73.2% smaller``, ``40.6% slower``), so the
printed number is the logged metric and its direction cannot be misread. A run repeated over
seeds prints ``mean ± ci95`` (:mod:`tinyexp.measure.stats`): ``0.7244 ± 0.141``,
``-0.087 ± 0.05``, ``25.7 ± 2.1% faster``.
"""

from __future__ import annotations

import math
import statistics

from tinyexp.measure import changes, stats

# Row order: task metrics first, then cost.
_TASK_METRICS = ("mse", "accuracy", "recall", "f1", "far", "mar", "roc_auc", "pr_auc")
_COSTS = ("params", "macs", "size_bytes", "weight_bytes", "flash_bytes", "ram_bytes",
          "latency_ms", "latency_p90_ms")


def fmt_number(value: float | None, *, signed: bool = False, decimals: int | None = None) -> str:
    """A number for display; ``-`` if missing or not finite.

    Args:
        value: the number.
        signed: print ``+`` on positive numbers (a delta); zero stays ``0``.
        decimals: fixed decimals (``67.7``); by default ``12,648`` for large whole numbers,
            whole with separators from 1,000 on (a mean over seeds: ``17,409``, not
            ``1.741e+04``), and 4 significant digits otherwise (``0.9833``, ``-0.005556``).
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
    if abs(value) >= 1000:
        return f"{value:{sign},.0f}"
    return f"{value:{sign}.4g}"


def fmt_reduction(pct: float | None, cost: str, decimals: int = 1,
                  ci: float | None = None) -> str:
    """A cost's ``reduction_pct`` in words: ``67.7% smaller`` (positive), ``12.0% larger``
    (negative); ``faster``/``slower`` for latencies; ``-`` if missing. With the half-width
    ``ci`` of its 95% interval: ``25.7 ± 2.1% faster`` (left out when it rounds to 0)."""
    if pct is None or not math.isfinite(pct):
        return "-"
    spread = _spread(ci, decimals)
    if pct == 0:
        return f"{fmt_number(0.0, decimals=decimals)}{spread}%"
    words = ("faster", "slower") if cost.startswith("latency") else ("smaller", "larger")
    return f"{fmt_number(abs(pct), decimals=decimals)}{spread}% {words[pct < 0]}"


def fmt_mean_ci(value: float | None, ci: float | None, *, signed: bool = False) -> str:
    """``0.7244 ± 0.141``: a mean over seeds and the half-width of its 95% interval, both by
    :func:`fmt_number`; the mean alone when ``ci`` is None or 0 (the same in every seed)."""
    text = fmt_number(value, signed=signed)
    return text if text == "-" else text + _spread(ci, None)


def _spread(ci: float | None, decimals: int | None) -> str:
    if ci is None or not math.isfinite(ci) or round(ci, 12 if decimals is None else decimals) == 0:
        return ""
    return f" ± {fmt_number(ci, decimals=decimals)}"


def _change_key(stage: str, name: str) -> str:
    """The logged change of ``name``: ``<stage>/<name>_delta`` or its ``<stage>/<reduction>``."""
    if name in _TASK_METRICS:
        return f"{stage}/{name}_delta"
    return f"{stage}/{changes.REDUCTIONS.get(name, name + '_reduction_pct')}"


def _computed_change(metrics: dict[str, float], stage: str, name: str) -> float | None:
    base, value = metrics.get(f"baseline/{name}"), metrics.get(f"{stage}/{name}")
    return changes.delta(base, value) if name in _TASK_METRICS else \
        changes.reduction_pct(base, value)


def stage_change(metrics: dict[str, float], stage: str,
                 name: str) -> tuple[float | None, float | None]:
    """The change of ``stage`` against the baseline the table prints for ``name``, and the
    half-width of its 95% interval over seeds (None for a single run).

    The change is the metric's ``<stage>/<name>_delta`` or the cost's ``<stage>/<reduction>``
    from ``metrics`` (with its ``_ci95``); when the run did not log one, it is computed by
    :mod:`tinyexp.measure.changes`, per seed for a repeated run (``seeds/<s>/...``): each seed
    against its own baseline, then the mean and interval of those changes.
    """
    key = _change_key(stage, name)
    if key in metrics:
        return metrics[key], stats.mean_ci(metrics, key)[1]
    seeds = stats.per_seed(metrics)
    if not seeds:
        return _computed_change(metrics, stage, name), None
    per_seed = [_computed_change(values, stage, name) for values in seeds.values()]
    finite = [c for c in per_seed if c is not None]
    return (statistics.fmean(finite) if finite else None), stats.ci95_halfwidth(finite)


def stage_table(metrics: dict[str, float], title: str = "") -> str:
    """Format flat ``stage/metric`` values as a table: one column per stage, then one per
    stage after the baseline with its delta (task metrics) or reduction (costs).

    A repeated run (metrics holding ``<key>_ci95``, see :mod:`tinyexp.measure.stats`) prints
    each number as ``mean ± ci95`` and says so under the table.
    """
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
        row = [name] + [fmt_mean_ci(*stats.mean_ci(metrics, f"{s}/{name}")) for s in stages]
        for stage in compared:
            change, ci = stage_change(metrics, stage, name)
            row.append(fmt_mean_ci(change, ci, signed=True) if name in _TASK_METRICS
                       else fmt_reduction(change, name, ci=ci))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths, strict=True)))) for r in rows]
    rule = "-" * len(lines[0])
    table = [title] if title else []
    table += [rule, lines[0], rule, *lines[1:], rule]
    if any(key.endswith("_ci95") for key in metrics):
        table.append(stats.note(stats.repeats(metrics)))
    return "\n".join(table)
