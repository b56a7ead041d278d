"""Report plots: the three sensitivity report plots and the per-layer sensitivity plot.

Part of :mod:`tinyexp.report` (which re-exports these names). matplotlib loads on use only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyexp.report_runs import LOWER_IS_BETTER, Record, _quant_rank

PLOTS = ("metric_vs_ratio.png", "metric_vs_size.png", "latency_vs_size.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, and none needed
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[tuple[float, float]], lower_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both size (x, lower) and metric (y)."""
    sign = 1.0 if lower_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        score = sign * points[i][1]
        if score < best:
            front.append(i)
            best = score
    return front


def _styles(records: list[Record]) -> tuple[dict[str, str], dict[str, str]]:
    archs = sorted({r.arch for r in records})
    quants = sorted({r.quant for r in records}, key=_quant_rank)
    colors = {a: f"C{i % 10}" for i, a in enumerate(archs)}
    markers = {q: "osD^v<>ph*"[i % 10] for i, q in enumerate(quants)}
    return colors, markers


def _bytes_axis(ax: Any) -> None:
    """A log x axis of byte counts labelled in kB (not 2x10^4)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g} kB"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _metric_label(metric: str) -> str:
    return f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)"


def _size(record: Record) -> float | None:
    return record.final("flash_bytes") or record.final("size_bytes")


def plot_metric_vs_ratio(records: list[Record], metric: str, path: Path) -> Path:
    """Sensitivity curves: the final metric against the pruning ratio, one line per
    architecture and quantization; the float baseline is the point at ratio 0."""
    plt = _pyplot()
    colors, markers = _styles(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch in colors:
        for quant in markers:
            mine = [r for r in records if r.arch == arch and r.quant == quant
                    and r.final(metric) is not None]
            if not mine:
                continue
            by_ratio: dict[float, list[float]] = {}
            for r in mine:
                by_ratio.setdefault(r.ratio, []).append(r.final(metric))
            if quant == "none" and 0.0 not in by_ratio:
                by_ratio[0.0] = [r.base(metric) for r in mine if r.base(metric) is not None]
            xs = sorted(x for x in by_ratio if by_ratio[x])
            ys = [sum(by_ratio[x]) / len(by_ratio[x]) for x in xs]
            ax.plot(xs, ys, marker=markers[quant], color=colors[arch],
                    linestyle="-" if quant == "none" else "--", label=f"{arch} / {quant}")
    ax.set_xlabel("pruning ratio (share of channels removed per group)")
    ax.set_ylabel(_metric_label(metric))
    ax.set_title(f"{metric} against pruning ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_metric_vs_size(records: list[Record], metric: str, path: Path) -> Path:
    """The final metric against the deployable file size, the Pareto front marked."""
    plt = _pyplot()
    colors, markers = _styles(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [(r, _size(r), r.final(metric)) for r in records]
    points = [(r, x, y) for r, x, y in points if x and y is not None and math.isfinite(y)]
    for r, x, y in points:
        ax.scatter(x, y, color=colors[r.arch], marker=markers[r.quant], s=40, zorder=3)
    bases = {(r.dataset, r.arch, r.base("flash_bytes") or r.base("size_bytes"), r.base(metric))
             for r in records if r.base(metric) is not None}
    for _, _, x, y in bases:
        ax.scatter(x, y, facecolors="none", edgecolors="grey", marker="o", s=60, zorder=2)
    front = pareto_front([(x, y) for _, x, y in points], metric in LOWER_IS_BETTER)
    if front:
        fx, fy = [points[i][1] for i in front], [points[i][2] for i in front]
        ax.step(fx, fy, where="post", color="black", linewidth=1, zorder=1)
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", zorder=4)
        one_dataset = len({r.dataset for r in records}) == 1
        for i in front:
            r = points[i][0]
            label = r.name.removeprefix(f"{r.dataset}-") if one_dataset else r.name
            ax.annotate(label, (points[i][1], points[i][2]), fontsize=6,
                        xytext=(4, 4), textcoords="offset points")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=a)
               for a, c in colors.items()]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=f"quant={q}")
                for q, m in markers.items()]
    handles += [plt.Line2D([], [], color="grey", marker="o", markerfacecolor="none",
                           linestyle="", label="float baseline"),
                plt.Line2D([], [], color="black", marker="o", markerfacecolor="none",
                           linestyle="-", label="Pareto front")]
    _bytes_axis(ax)
    ax.set_xlabel("flash size of the deployable file (log scale)")
    ax.set_ylabel(_metric_label(metric))
    ax.set_title(f"{metric} against size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize="small", ncol=2)
    return _save(fig, path)


def plot_latency_vs_size(records: list[Record], path: Path) -> Path:
    """Median latency (bar up to p90) against file size, per architecture and quantization."""
    plt = _pyplot()
    colors, markers = _styles(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        x, y, p90 = _size(r), r.final("latency_ms"), r.final("latency_p90_ms")
        if not x or y is None:
            continue
        ax.errorbar(x, y, yerr=[[0], [max(0.0, (p90 or y) - y)]], color=colors[r.arch],
                    marker=markers[r.quant], capsize=2, linestyle="")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=a)
               for a, c in colors.items()]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=f"quant={q}")
                for q, m in markers.items()]
    _bytes_axis(ax)
    ax.set_xlabel("flash size of the deployable file (log scale)")
    ax.set_ylabel("latency ms (median, bar to p90; ONNX Runtime, 1 thread)")
    ax.set_title("latency against size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize="small", ncol=2)
    return _save(fig, path)


def plot_layer_sensitivity(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Per-layer sensitivity: the metric against the ratio, one line per prunable group
    pruned alone (rows of :func:`tinyexp.compress.sensitivity.layer_sensitivity`)."""
    plt = _pyplot()
    base = next(r[metric] for r in rows if r["group"] == "(none)")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = [g for g in dict.fromkeys(r["group"] for r in rows) if g != "(none)"]
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
    ax.set_ylabel(_metric_label(metric))
    ax.set_title(f"per-layer sensitivity: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
