"""Report plots: the metric against pruning ratio and size (with the Pareto front), and
latency against size. Runs that differ only by seed are one point (:mod:`tinyexp.report.seeds`):
the mean, with a bar over its 95% confidence interval. matplotlib loads on use only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tinyexp.files import atomic_write
from tinyexp.measure import stats
from tinyexp.report.runs import LOWER_IS_BETTER, Record, quant_rank
from tinyexp.report.seeds import merge_seeds, seed_values
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


# ----------------------------------------------------------------------------- readable axes


def plain(value: float) -> str:
    """A tick label with the fewest decimals that show the tick exactly (``10``, ``2.5``,
    ``0.012``): locators put ticks on round numbers, so labels stay short and distinct."""
    for decimals in range(7):
        if abs(round(value, decimals) - value) <= 1e-9 * max(1.0, abs(value)):
            return fmt_number(value, decimals=decimals)
    return fmt_number(value)


def readable_limits(lo: float, hi: float, log: bool) -> tuple[float, float] | None:
    """Axis limits around data that barely vary (sizes 9,958 to 9,958.4 B), wide enough for
    ticks on round numbers; None when autoscaling already gives such ticks."""
    if log:
        if lo > 0 and hi / lo < 2.5:
            center = math.sqrt(lo * hi)
            return center / 1.6, center * 1.6  # a factor 2.56 holds the data and round ticks
        return None
    scale = max(abs(lo), abs(hi))
    if scale > 0 and hi - lo < 0.02 * scale:
        center = (lo + hi) / 2
        return center - 0.05 * scale, center + 0.05 * scale
    return None


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _bytes_axis(ax: Any, sizes: Iterable[float | None]) -> None:
    """A log x axis of byte counts labelled in kB (not 2x10^4), readable whatever the range:
    1-2-5 ticks over decades, round linear ticks within one (1-2-5 would leave one or none)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ax.set_xscale("log")
    sizes = [s for s in _finite(sizes) if s > 0]
    within_decade = bool(sizes) and max(sizes) / min(sizes) < 10
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]) if within_decade
                               else LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{plain(x / 1000)} kB"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    limits = readable_limits(min(sizes), max(sizes), log=True) if sizes else None
    if limits:
        ax.set_xlim(*limits)


def _value_axis(ax: Any, values: Iterable[float | None]) -> None:
    """The y axis: plain tick labels (no offset like ``1e-5+1.684e-2``), round ticks."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: plain(y)))
    values = _finite(values)
    limits = readable_limits(min(values), max(values), log=False) if values else None
    if limits:
        ax.set_ylim(*limits)


# ----------------------------------------------------------------------------- values over seeds


def _seed_items(record: Record, key: str) -> list[tuple[Any, float]]:
    """``(seed, value)`` of ``key`` for each seed of the record with a finite value."""
    return [(seed, values[key]) for seed, values in seed_values(record).items()
            if values.get(key) is not None and math.isfinite(values[key])]


def _mean_ci(values: Sequence[float]) -> tuple[float | None, float]:
    """Mean and CI half-width (NaN: no bar) of finite values; (None, NaN) if there are none."""
    if not values:
        return None, math.nan
    ci = stats.ci95_halfwidth(values)
    return statistics.fmean(values), math.nan if ci is None else ci


def _bars(cis: Sequence[float]) -> Sequence[float] | None:
    return cis if any(math.isfinite(c) and c > 0 for c in cis) else None


def _over_seeds(records: list[Record]) -> str:
    return " (mean ± 95% CI over seeds)" if any(r.n_seeds > 1 for r in records) else ""


def metric_label(metric: str) -> str:
    return f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)"


def _size(record: Record) -> float | None:
    return record.final("flash_bytes") or record.final("size_bytes")


# ----------------------------------------------------------------------------- the plots


def _ratio_lines(records: list[Record]) -> dict[tuple[str, str, str, str], list[Record]]:
    """Records per sensitivity curve (dataset, arch, pruning method, quant); an unpruned run
    is the ratio-0 point of every curve of its dataset, arch and quantization."""
    lines: dict[tuple[str, str, str, str], list[Record]] = {}
    for r in records:
        if r.prune != "none":
            lines.setdefault((r.dataset, r.arch, r.prune, r.quant), []).append(r)
    for r in (r for r in records if r.prune == "none"):
        keys = [k for k in lines if (k[0], k[1], k[3]) == (r.dataset, r.arch, r.quant)]
        for key in keys or [(r.dataset, r.arch, "none", r.quant)]:
            lines.setdefault(key, []).append(r)
    return dict(sorted(lines.items(), key=lambda kv: (*kv[0][:3], quant_rank(kv[0][3]))))


def plot_metric_vs_ratio(records: list[Record], metric: str, path: Path) -> Path:
    """Sensitivity curves: the final metric against the pruning ratio, one line per
    architecture, pruning method and quantization, each starting at ratio 0: the line's
    unpruned run, else the float baseline (a hollow marker). Bars: 95% CI over seeds."""
    plt = pyplot()
    records = [r for r in merge_seeds(records) if r.final(metric) is not None]
    colors, markers = _styles(records)
    lines = _ratio_lines(records)
    datasets, methods = {k[0] for k in lines}, {k[2] for k in lines} - {"none"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn: list[float] = []
    hollow = False
    ratios = sorted({r.ratio for r in records} | {0.0})
    step = min((b - a for a, b in zip(ratios, ratios[1:], strict=False)), default=1.0)
    for i, ((dataset, arch, method, quant), mine) in enumerate(lines.items()):
        # lines side by side around each ratio, so their bars do not hide each other
        dodge = (i - (len(lines) - 1) / 2) * min(0.04 * step, 0.2 * step / len(lines))
        by_ratio: dict[float, list[float]] = {}
        for r in mine:
            by_ratio.setdefault(r.ratio, []).extend(
                v for _, v in _seed_items(r, f"{r.stage}/{metric}"))
        points = {x: _mean_ci(vs) for x, vs in sorted(by_ratio.items()) if vs}
        if 0.0 not in points:  # the float baseline, each seed once (the runs share it)
            pairs = {p for r in mine for p in _seed_items(r, f"baseline/{metric}")}
            base = _mean_ci([v for _, v in pairs])
            if base[0] is not None:
                points = {0.0: base, **points}
                ax.plot(dodge, base[0], marker=markers[quant], color=colors[arch],
                        markerfacecolor="white", linestyle="", zorder=4)
                hollow = True
        if not points:
            continue
        xs = [x + dodge for x in points]
        ys, cis = [m for m, _ in points.values()], [c for _, c in points.values()]
        label = " / ".join([*([dataset] if len(datasets) > 1 else []), arch,
                            *([method] if len(methods) > 1 else []), quant])
        ax.errorbar(xs, ys, yerr=_bars(cis), marker=markers[quant], color=colors[arch],
                    capsize=3, linestyle="-" if quant == "none" else "--", label=label)
        drawn += [y + s * c for y, c in zip(ys, cis, strict=True) for s in (-1, 1)
                  if math.isfinite(c)] + ys
    handles, _ = ax.get_legend_handles_labels()
    if hollow:
        handles.append(plt.Line2D([], [], color="grey", marker="o", markerfacecolor="white",
                                  linestyle="", label="float baseline (ratio 0)"))
    _value_axis(ax, drawn)
    ax.set_xlabel("pruning ratio (share of channels removed per group)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} against pruning ratio{_over_seeds(records)}")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize="small", ncol=2)
    return save_png(fig, path)


def plot_metric_vs_size(records: list[Record], metric: str, path: Path) -> Path:
    """The final metric against the deployable file size, the Pareto front marked (on the
    means); bars: 95% CI over seeds."""
    plt = pyplot()
    records = merge_seeds(records)
    colors, markers = _styles(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [(r, _size(r), r.final(metric), r.final_ci(metric)) for r in records]
    points = [p for p in points if p[1] and p[2] is not None and math.isfinite(p[2])]
    for r, x, y, ci in points:
        ax.errorbar(x, y, yerr=ci, color=colors[r.arch], marker=markers[r.quant], capsize=3,
                    linestyle="", zorder=3)
    bases = {(r.dataset, r.arch, r.base("flash_bytes") or r.base("size_bytes"), r.base(metric)):
             r.base_ci(metric) for r in records if r.base(metric) is not None}
    for (_, _, x, y), ci in bases.items():
        ax.errorbar(x, y, yerr=ci, marker="o", markersize=8, markerfacecolor="none",
                    markeredgecolor="grey", ecolor="grey", capsize=3, linestyle="", zorder=2)
    front = pareto_front([(x, y) for _, x, y, _ in points], metric in LOWER_IS_BETTER)
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
    _bytes_axis(ax, [p[1] for p in points] + [k[2] for k in bases])
    _value_axis(ax, [p[2] for p in points] + [k[3] for k in bases])
    ax.set_xlabel("flash size of the deployable file (log scale)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} against size{_over_seeds(records)}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize="small", ncol=2)
    return save_png(fig, path)


def plot_latency_vs_size(records: list[Record], path: Path) -> Path:
    """Median latency against file size, per architecture and quantization: a thin line up
    to the p90, a capped bar over the median's 95% CI over seeds."""
    plt = pyplot()
    records = merge_seeds(records)
    colors, markers = _styles(records)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes, drawn = [], []
    for r in records:
        x, y, p90 = _size(r), r.final("latency_ms"), r.final("latency_p90_ms")
        if not x or y is None or not math.isfinite(y):
            continue
        ci = r.final_ci("latency_ms")
        if p90 is not None and math.isfinite(p90) and p90 > y:
            ax.vlines(x, y, p90, color=colors[r.arch], linewidth=1, alpha=0.6)
        ax.errorbar(x, y, yerr=ci, color=colors[r.arch], marker=markers[r.quant], capsize=3,
                    linestyle="")
        sizes.append(x)
        drawn += [y, p90, y - (ci or 0), y + (ci or 0)]
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=a)
               for a, c in colors.items()]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=f"quant={q}")
                for q, m in markers.items()]
    _bytes_axis(ax, sizes)
    _value_axis(ax, drawn)
    ax.set_xlabel("flash size of the deployable file (log scale)")
    ax.set_ylabel("latency ms (median, line to p90; ONNX Runtime, 1 thread)")
    ax.set_title(f"latency against size{_over_seeds(records)}")
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
