"""The per-layer sensitivity report of one run (``analysis=layers``): each prunable group pruned
alone at a few ratios, as a console table, a CSV and a plot.

The rows come from :func:`tinyexp.compress.sensitivity.layer_sensitivity`: one per group and
ratio (``group``, ``width``, ``kept``, ``ratio``, the metric and ``<metric>_delta`` = pruned -
unpruned), and one ``(none)`` row for the unpruned network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyexp.report.plots import metric_label, pyplot, save_png
from tinyexp.report.tables import align, write_rows_csv
from tinyexp.summary import fmt_number

UNPRUNED = "(none)"


def write_layer_report(rows: list[dict[str, Any]], metric: str, out_dir: Path) -> list[Path]:
    """Write ``layer_sensitivity.csv`` and ``layer_sensitivity.png`` into ``out_dir`` and print
    the table.

    Returns:
        ``[csv_path, png_path]``.
    """
    csv_path = write_rows_csv(rows, out_dir / "layer_sensitivity.csv")
    png_path = plot_layer_sensitivity(rows, metric, out_dir / "layer_sensitivity.png")
    print(layer_table(rows, metric), flush=True)
    return [csv_path, png_path]


def layer_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The per-layer analysis in the terminal: one line per group, the metric's delta per ratio."""
    ratios = sorted({r["ratio"] for r in rows if r["group"] != UNPRUNED})
    base = next(r[metric] for r in rows if r["group"] == UNPRUNED)
    lines = [["group", "channels", *(f"{metric} delta @{fmt_number(x)}" for x in ratios)]]
    for group in dict.fromkeys(r["group"] for r in rows if r["group"] != UNPRUNED):
        mine = {r["ratio"]: r for r in rows if r["group"] == group}
        first = next(iter(mine.values()))
        lines.append([group, fmt_number(first["width"]),
                      *(_layer_cell(mine.get(x), metric) for x in ratios)])
    note = "; kept all: the ratio removes no channel of that group (rounding)" \
        if any(cell == "kept all" for line in lines for cell in line) else ""
    return f"per-layer sensitivity ({metric} unpruned: {fmt_number(base)}{note})\n" + align(lines)


def _layer_cell(row: dict[str, Any] | None, metric: str) -> str:
    if row is None:
        return ""
    if row["kept"] == row["width"]:
        return "kept all"
    return fmt_number(row[f"{metric}_delta"], signed=True)


def plot_layer_sensitivity(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Per-layer sensitivity: the metric against the ratio, one line per prunable group
    pruned alone."""
    plt = pyplot()
    base = next(r[metric] for r in rows if r["group"] == UNPRUNED)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = [g for g in dict.fromkeys(r["group"] for r in rows) if g != UNPRUNED]
    for i, group in enumerate(groups):
        # a ratio that removes no channel (rounding) measures nothing: leave its point out
        mine = sorted((r for r in rows if r["group"] == group and r["kept"] < r["width"]),
                      key=lambda r: r["ratio"])
        if not mine:
            continue
        ax.plot([0.0] + [r["ratio"] for r in mine], [base] + [r[metric] for r in mine],
                marker="o", color=f"C{i % 10}", label=f"{group} ({mine[0]['width']} ch)")
    ax.axhline(base, color="grey", linestyle=":", linewidth=1, label="unpruned")
    ax.set_xlabel("pruning ratio of this group alone (no fine-tuning unless configured)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"per-layer sensitivity: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)
