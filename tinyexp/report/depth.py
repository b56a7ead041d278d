"""The depth-pruning analysis of one run (``analysis=depth``): the network cut after each block,
its auxiliary head trained, as a console table, a CSV and a plot.

The rows come from :class:`tinyexp.stages.depth.DepthAnalysis`: one ``(none)`` row for the uncut
network, then one per cut (``cut``, ``blocks_kept``, ``blocks_total``, ``channels`` at the cut,
``params``, ``params_ratio`` of the uncut network's, the task metrics, ``<metric>_delta`` = cut -
uncut, ``head_epochs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyexp.report.plots import metric_label, pyplot, save_png
from tinyexp.report.runs import LOWER_IS_BETTER
from tinyexp.report.tables import align, write_rows_csv
from tinyexp.stages.depth import UNCUT
from tinyexp.summary import fmt_number


def write_depth_report(rows: list[dict[str, Any]], metric: str, tolerance: float,
                       best: int | None, out_dir: Path) -> list[Path]:
    """Write ``depth_analysis.csv`` and ``depth_analysis.png`` into ``out_dir`` and print the
    table.

    Returns:
        ``[csv_path, png_path]``.
    """
    csv_path = write_rows_csv(rows, out_dir / "depth_analysis.csv")
    png_path = plot_depth_analysis(rows, metric, tolerance, best, out_dir / "depth_analysis.png")
    print(depth_table(rows, metric, best), flush=True)
    return [csv_path, png_path]


def depth_table(rows: list[dict[str, Any]], metric: str, best: int | None) -> str:
    """The analysis in the terminal: one line per cut, the uncut network first."""
    lines = [["network", "blocks", "channels", "params", "params %", metric, f"{metric} delta"]]
    for r in rows:
        name = "uncut" if r["cut"] == UNCUT else f"cut after {r['cut']}"
        lines.append([name + (" (best)" if r["cut"] == best else ""),
                      f"{r['blocks_kept']}/{r['blocks_total']}", fmt_number(r["channels"]),
                      fmt_number(r["params"]), fmt_number(100 * r["params_ratio"], decimals=1),
                      fmt_number(r[metric]), fmt_number(r[f"{metric}_delta"], signed=True)])
    verdict = f"best cut: {best}" if best is not None else "no cut within the tolerance"
    return f"depth pruning with an auxiliary head ({metric}; {verdict})\n" + align(lines)


def plot_depth_analysis(rows: list[dict[str, Any]], metric: str, tolerance: float,
                        best: int | None, path: Path) -> Path:
    """The metric against the parameter count: one point per cut (labelled by it), the uncut
    network, the tolerance line and the best cut."""
    plt = pyplot()
    uncut = next(r for r in rows if r["cut"] == UNCUT)
    cuts = [r for r in rows if r["cut"] != UNCUT]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["params"] for r in cuts], [r[metric] for r in cuts], marker="o", color="C0",
            label="cut + auxiliary head")
    for r in cuts:
        ax.annotate(f"cut {r['cut']}", (r["params"], r[metric]), textcoords="offset points",
                    xytext=(4, 4), fontsize="small")
    ax.scatter([uncut["params"]], [uncut[metric]], marker="*", s=140, color="C3", zorder=3,
               label="uncut")
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    ax.axhline(uncut[metric] + sign * tolerance, color="grey", linestyle=":", linewidth=1,
               label=f"tolerance ({fmt_number(tolerance)} from uncut)")
    chosen = [r for r in cuts if r["cut"] == best]
    if chosen:
        ax.scatter([chosen[0]["params"]], [chosen[0][metric]], s=220, facecolors="none",
                   edgecolors="C2", linewidths=2, zorder=4, label=f"best cut ({best})")
    sizes = [r["params"] for r in rows]
    if max(sizes) > 10 * min(sizes):  # parameters grow fast with depth: log scale spreads them
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"depth pruning: {metric} against size, by cut")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)
