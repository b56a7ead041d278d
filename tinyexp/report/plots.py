"""Report plots: the metric against pruning ratio and size (with the Pareto front), and
latency against size. matplotlib loads on use only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyexp.files import atomic_write
from tinyexp.report.runs import LOWER_IS_BETTER, Record, quant_rank
from tinyexp.summary import fmt_number

PLOTS = ("metric_vs_ratio.png", "metric_vs_size.png", "latency_vs_size.png")


def pyplot() -> Any:
    """matplotlib's pyplot drawing into files (the Agg backend)."""
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
    quants = sorted({r.quant for r in records}, key=quant_rank)
    colors = {a: f"C{i % 10}" for i, a in enumerate(archs)}
    markers = {q: "osD^v<>ph*"[i % 10] for i, q in enumerate(quants)}
    return colors, markers


def _bytes_axis(ax: Any) -> None:
    """A log x axis of byte counts labelled in kB (not 2x10^4)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{fmt_number(x / 1000)} kB"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def metric_label(metric: str) -> str:
    return f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)"


def _size(record: Record) -> float | None:
    return record.final("flash_bytes") or record.final("size_bytes")


def plot_metric_vs_ratio(records: list[Record], metric: str, path: Path) -> Path:
    """Sensitivity curves: the final metric against the pruning ratio, one line per
    architecture and quantization; the float baseline is the point at ratio 0."""
    plt = pyplot()
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
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} against pruning ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return save_png(fig, path)


def plot_metric_vs_size(records: list[Record], metric: str, path: Path) -> Path:
    """The final metric against the deployable file size, the Pareto front marked."""
    plt = pyplot()
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
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} against size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize="small", ncol=2)
    return save_png(fig, path)


def plot_latency_vs_size(records: list[Record], path: Path) -> Path:
    """Median latency (bar up to p90) against file size, per architecture and quantization."""
    plt = pyplot()
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
    return save_png(fig, path)


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        # the temporary file ends in .tmp: name the format
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path
