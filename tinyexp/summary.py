"""Console table of one run: each metric per stage, and the change against the baseline."""

from __future__ import annotations

import math

# Row order: task metrics first, then cost. The change column is relative, lower or higher.
_ORDER = ("mse", "accuracy", "recall", "f1", "far", "mar", "roc_auc", "params", "macs",
          "size_bytes", "weight_bytes", "flash_bytes", "ram_bytes", "latency_ms",
          "latency_p90_ms")


def fmt_number(value: float | None) -> str:
    """``12,648`` for large whole numbers, 4 significant digits otherwise, ``-`` if missing."""
    if value is None or not math.isfinite(value):
        return "-"
    if float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    return f"{value:.4g}"


def stage_table(metrics: dict[str, float], title: str = "") -> str:
    """Format flat ``stage/metric`` values as a table with one column per stage."""
    stages: list[str] = []
    for key in metrics:
        stage = key.split("/", 1)[0]
        # a stage measures a network (params); other prefixes (layers/...) are analyses
        if stage not in stages and f"{stage}/params" in metrics:
            stages.append(stage)
    names = [m for m in _ORDER if any(f"{s}/{m}" in metrics for s in stages)]
    header = ["metric", *stages] + [f"{s} vs baseline" for s in stages[1:]]
    rows = [header]
    for name in names:
        base = metrics.get(f"{stages[0]}/{name}")
        row = [name] + [fmt_number(metrics.get(f"{s}/{name}")) for s in stages]
        for stage in stages[1:]:
            value = metrics.get(f"{stage}/{name}")
            if value is None or base in (None, 0) or math.isnan(base) or math.isnan(value):
                row.append("-")
            else:
                row.append(f"{100 * (value - base) / abs(base):+.1f}%")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths, strict=True)))) for r in rows]
    rule = "-" * len(lines[0])
    return "\n".join([title, rule, lines[0], rule, *lines[1:], rule] if title else
                     [rule, lines[0], rule, *lines[1:], rule])
