"""Sensitivity reports: the comparison table and plots of the papers, from MLflow runs.

    python -m tinyexp.report                          # every finished run of experiment "tinyexp"
    python -m tinyexp.report --sweep latest           # the newest multirun or search
    python -m tinyexp.report --sweep multirun/2026-11-23/12-00-00
    python -m tinyexp.report --tag tinyexp.arch=cnn --tag tinyexp.quant=int8

writes into ``--out``:

* ``sensitivity.md`` / ``.csv`` / ``.html``: one row per run (dataset, architecture, pruning,
  quantization) with the task metric, parameters, MACs, latency, file size, flash and RAM of
  its final stage, each next to its change against that run's own float baseline;
* ``metric_vs_ratio.png`` (sensitivity curves per architecture), ``metric_vs_size.png`` (with
  the Pareto front) and ``latency_vs_size.png``;

and logs the same files to a new MLflow run (tag ``tinyexp.role=report``), so the UI shows them.
A multirun also prints a compact version of the table when it ends (:class:`MultirunSummary`).

Only the standard library is imported at module level: matplotlib and MLflow load on use.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tinyexp.config import ALL_TASK_METRICS
from tinyexp.summary import fmt_number

# A run's last stage holds the deployable artifact: it is the one the table reports.
STAGES = ("baseline", "pruned", "quantized")
LOWER_IS_BETTER = frozenset({"mse", "far", "mar"})
# Cost columns: (metric key, table header). The change is relative to the float baseline.
COSTS = (("params", "params"), ("macs", "MACs"), ("latency_ms", "latency ms"),
         ("size_bytes", "size B"), ("flash_bytes", "flash B"), ("ram_bytes", "RAM B"))
PLOTS = ("metric_vs_ratio.png", "metric_vs_size.png", "latency_vs_size.png")
_QUANT_ORDER = ("none", "dynamic", "fp16", "int16x8", "int8", "qat")


class ReportError(ValueError):
    """Bad selection or option: reported as one line, before anything is written."""


@dataclass
class Record:
    """One finished experiment run: what it was and its flat ``stage/metric`` values."""

    name: str
    dataset: str
    arch: str
    prune: str
    ratio: float
    quant: str
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def stage(self) -> str:
        """The last stage the run measured (its deployable artifact)."""
        return [s for s in STAGES if f"{s}/params" in self.metrics][-1]

    def final(self, name: str) -> float | None:
        return self.metrics.get(f"{self.stage}/{name}")

    def base(self, name: str) -> float | None:
        return self.metrics.get(f"baseline/{name}")


# ----------------------------------------------------------------------------- selecting runs


def _ratio(prune: str, value: Any) -> float:
    return 0.0 if prune == "none" or value in (None, "None") else float(value)


def _quant(name: str, weight_bits: Any, act_bits: Any) -> str:
    """``qat-w4a8`` for QAT (bit widths differ between runs), the mode's name otherwise."""
    return f"qat-w{weight_bits}a{act_bits}" if name == "qat" else name


def records_from_mlflow(runs: list[dict[str, Any]]) -> list[Record]:
    """Records of the experiment runs among MLflow runs (sweep parents and reports skipped)."""
    records = []
    for run in runs:
        tags, metrics = run["tags"], run["metrics"]
        if "tinyexp.arch" not in tags or "baseline/params" not in metrics:
            continue
        prune = tags.get("tinyexp.prune", "none")
        records.append(Record(
            name=run["name"], dataset=tags.get("tinyexp.dataset", "?"), arch=tags["tinyexp.arch"],
            prune=prune, ratio=_ratio(prune, run["params"].get("prune.ratio")),
            quant=_quant(tags.get("tinyexp.quant", "none"), run["params"].get("quant.weight_bits"),
                         run["params"].get("quant.act_bits")),
            metrics=metrics, run_id=run["run_id"]))
    return records


def records_from_dir(sweep_dir: Path) -> tuple[list[Record], list[str]]:
    """Records read from a multirun folder's job folders (``metrics.json`` + ``config.yaml``).

    Returns the records and the job folders that hold no metrics (failed or unfinished jobs).
    """
    from omegaconf import OmegaConf

    from tinyexp.config import describe

    records, missing = [], []
    # Hydra gives every job folder a .hydra/; our config.yaml appears once the job finishes.
    jobs = [p for p in Path(sweep_dir).iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "config.yaml").is_file())]
    for job in sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                           else 0, p.name)):
        if not (job / "metrics.json").is_file() or not (job / "config.yaml").is_file():
            missing.append(job.name)
            continue
        cfg = OmegaConf.load(job / "config.yaml")
        metrics = {k: (math.nan if v is None else float(v))
                   for k, v in json.loads((job / "metrics.json").read_text()).items()}
        records.append(Record(
            name=describe(cfg), dataset=cfg.dataset.name, arch=cfg.arch.name,
            prune=cfg.prune.name, ratio=_ratio(cfg.prune.name, cfg.prune.get("ratio")),
            quant=_quant(cfg.quant.name, cfg.quant.get("weight_bits"), cfg.quant.get("act_bits")),
            metrics=metrics))
    return records, missing


def sweep_parent(tracking_uri: str | None, experiment: str,
                 sweep: str) -> tuple[str, str, Path | None]:
    """The MLflow parent run id of a multirun (its jobs hang under it), a label for it, and
    its folder when that is on this machine.

    ``sweep`` is a multirun folder (it holds the id of its MLflow parent run) or ``latest``.
    """
    from tinyexp import tracking

    if sweep == "latest":
        parents = tracking.find_runs(tracking_uri, experiment, "tags.`tinyexp.role` = 'sweep'")
        if not parents:
            raise ReportError(f"--sweep: no multirun in MLflow experiment {experiment!r}")
        parent = parents[-1]
        folder = Path(parent["tags"].get("tinyexp.sweep_dir", ""))
        return parent["run_id"], parent["name"], folder if folder.name and folder.is_dir() \
            else None
    folder = Path(sweep)
    id_file = folder / ".mlflow_parent_run_id"
    if not id_file.is_file():
        raise ReportError(f"--sweep: {folder} is not a multirun folder logged to MLflow "
                          "(no .mlflow_parent_run_id in it); pass a folder under multirun/, "
                          "or 'latest'")
    return id_file.read_text().strip(), f"{folder.parent.name}/{folder.name}", folder


def tag_filter(tags: Sequence[str]) -> str:
    """``["tinyexp.arch=cnn"]`` -> an MLflow filter string (clauses joined by AND)."""
    clauses = []
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--tag: expected KEY=VALUE, got {item!r}")
        clauses.append(f"tags.`{key}` = '{value}'")
    return " and ".join(clauses)


# ----------------------------------------------------------------------------- the table


def task_metrics(records: list[Record], requested: Sequence[str] | None = None) -> list[str]:
    """The task metrics to report: ``requested``, else f1 and mse (anomaly) or accuracy."""
    have = {name for r in records for name in ALL_TASK_METRICS if r.final(name) is not None}
    if requested:
        for name in requested:
            if name not in have:
                raise ReportError(f"--metric: {name!r} is not measured by the selected runs; "
                                  f"allowed: {', '.join(m for m in ALL_TASK_METRICS if m in have)}")
        return list(requested)
    return [m for m in ("f1", "mse", "accuracy") if m in have] or sorted(have)[:1]


def _change_pct(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or not math.isfinite(value + base):
        return None
    return 100.0 * (value - base) / abs(base)


def _quant_rank(quant: str) -> tuple[int, str]:
    mode = quant.split("-", 1)[0]  # qat-w4a8 ranks with qat
    return (_QUANT_ORDER.index(mode) if mode in _QUANT_ORDER else len(_QUANT_ORDER), quant)


def _sort_key(record: Record) -> tuple:
    return record.dataset, record.arch, record.ratio, _quant_rank(record.quant), record.name


def table_rows(records: list[Record], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row of raw numbers per run: the CSV, and what the other formats print."""
    rows = []
    for r in sorted(records, key=_sort_key):
        row: dict[str, Any] = {"run": r.name, "dataset": r.dataset, "arch": r.arch,
                               "prune": r.prune, "ratio": r.ratio, "quant": r.quant,
                               "stage": r.stage}
        for name in metrics:
            value, base = r.final(name), r.base(name)
            row[f"baseline_{name}"] = base
            row[name] = value
            row[f"{name}_delta"] = None if value is None or base is None else value - base
        for key, _ in COSTS:
            row[f"baseline_{key}"] = r.base(key)
            row[key] = r.final(key)
            row[f"{key}_change_pct"] = _change_pct(r.final(key), r.base(key))
        row["run_id"] = r.run_id
        rows.append(row)
    return rows


def _cells(row: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """A row as display cells: value with its change against the baseline in brackets."""
    prune = "none" if row["prune"] == "none" else f"{row['prune']} {row['ratio']:g}"
    cells = [row["run"], row["arch"], prune, row["quant"]]
    is_base = row["stage"] == "baseline"  # its own baseline: no change to show
    for name in metrics:
        delta = None if is_base else row[f"{name}_delta"]
        cells.append(fmt_number(row[name]) + ("" if delta is None else f" ({delta:+.3f})"))
    for key, _ in COSTS:
        change = None if is_base else row[f"{key}_change_pct"]
        cells.append(fmt_number(row[key]) + ("" if change is None else f" ({change:+.1f}%)"))
    return cells


def _headers(metrics: Sequence[str]) -> list[str]:
    return ["run", "arch", "pruning", "quant", *metrics, *(h for _, h in COSTS)]


def to_markdown(rows: list[dict[str, Any]], metrics: Sequence[str]) -> str:
    head = _headers(metrics)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    lines += ["| " + " | ".join(_cells(row, metrics)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows of raw values as CSV (None as an empty cell), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    _write_text(path, buffer.getvalue())
    return path


def to_html(rows: list[dict[str, Any]], metrics: Sequence[str], title: str,
            images: Sequence[Path]) -> str:
    """A self-contained page: the table and the plots embedded as data URIs."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _headers(metrics))
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row, metrics))
                     + "</tr>" for row in rows)
    figures = "\n".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        for p in images)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }}
th:nth-child(-n+4), td:nth-child(-n+4) {{ text-align: left; }}
tr:nth-child(even) {{ background: #f6f6f6; }}
img {{ max-width: 720px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Final stage of each run; in brackets the change against the run's own float baseline
(task metrics: difference; costs: percent).</p>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
{figures}
</body></html>
"""


def _align(lines: list[list[str]]) -> str:
    """Columns padded to width (first left, the rest right), between rules."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    rule = "-" * len(text[0])
    return "\n".join([rule, text[0], rule, *text[1:], rule])


def layer_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The per-layer analysis in the terminal: one line per group, the metric change per ratio."""
    ratios = sorted({r["ratio"] for r in rows if r["group"] != "(none)"})
    base = next(r[metric] for r in rows if r["group"] == "(none)")
    lines = [["group", "channels", *(f"d{metric} @{x:g}" for x in ratios)]]
    for group in dict.fromkeys(r["group"] for r in rows if r["group"] != "(none)"):
        mine = {r["ratio"]: r for r in rows if r["group"] == group}
        first = next(iter(mine.values()))
        lines.append([group, str(first["width"]), *(_layer_cell(mine.get(x), metric)
                                                    for x in ratios)])
    note = "; kept all: the ratio removes no channel of that group (rounding)" \
        if any(cell == "kept all" for line in lines for cell in line) else ""
    return f"per-layer sensitivity ({metric} unpruned: {base:.4g}{note})\n" + _align(lines)


def _layer_cell(row: dict[str, Any] | None, metric: str) -> str:
    if row is None:
        return ""
    if row["kept"] == row["width"]:
        return "kept all"
    return f"{row[f'{metric}_delta']:+.3f}"


def compact_table(records: list[Record], metric: str) -> str:
    """The console version: one line per run, the changes against the baseline."""
    head = ["run", metric, f"d{metric}", "MACs", "size B", "flash B", "RAM B", "latency ms"]
    lines = [head]
    for r in sorted(records, key=_sort_key):
        value, base = r.final(metric), r.base(metric)
        no_change = value is None or base is None or r.stage == "baseline"
        cells = [r.name, fmt_number(value), "" if no_change else f"{value - base:+.3f}"]
        for key in ("macs", "size_bytes", "flash_bytes", "ram_bytes", "latency_ms"):
            change = _change_pct(r.final(key), r.base(key))
            cells.append(fmt_number(r.final(key)) + ("" if not change else f" {change:+.0f}%"))
        lines.append(cells)
    return _align(lines)


# ----------------------------------------------------------------------------- plots


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


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the report


def write_report(records: list[Record], out_dir: Path, metrics: Sequence[str],
                 title: str) -> list[Path]:
    """Write the table (md, csv, html) and the three plots; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(records, metrics)
    primary = metrics[0]
    plots = [plot_metric_vs_ratio(records, primary, out_dir / PLOTS[0]),
             plot_metric_vs_size(records, primary, out_dir / PLOTS[1]),
             plot_latency_vs_size(records, out_dir / PLOTS[2])]
    _write_text(out_dir / "sensitivity.md", f"# {title}\n\n" + to_markdown(rows, metrics))
    write_rows_csv(rows, out_dir / "sensitivity.csv")
    _write_text(out_dir / "sensitivity.html", to_html(rows, metrics, title, plots))
    return [out_dir / "sensitivity.md", out_dir / "sensitivity.csv",
            out_dir / "sensitivity.html", *plots]


class MultirunSummary(Callback):
    """Hydra callback: at the end of a multirun, print the compact table of its jobs."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        print_sweep_summary(Path(str(config.hydra.sweep.dir)))


def print_sweep_summary(sweep_dir: Path) -> None:
    """Print the compact table of a multirun folder's finished jobs (and name the others)."""
    if not sweep_dir.is_dir():
        return
    records, missing = records_from_dir(sweep_dir)
    if records:
        metric = task_metrics(records)[0]
        runs = f"{len(records)} run{'s' if len(records) != 1 else ''}"
        print(f"\n{runs} in {sweep_dir} (final stage; change vs own float baseline)")
        print(compact_table(records, metric))
        print(f"full report: tinyexp-report --sweep {sweep_dir}", flush=True)
    if missing:
        print("jobs without results (failed, pruned by a search, or interrupted): "
              + ", ".join(missing), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyexp-report",
        description="Sensitivity table (Markdown, CSV, HTML) and plots from tinyexp's MLflow runs.")
    parser.add_argument("--experiment", default="tinyexp", help="MLflow experiment (tinyexp)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's)")
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--sweep", help="a multirun folder (multirun/<date>/<time>) or 'latest'")
    select.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="select runs by tag, e.g. tinyexp.arch=cnn (repeatable)")
    select.add_argument("--filter", default="", help="a raw MLflow search filter string")
    parser.add_argument("--metric", action="append", default=None,
                        help=f"task metric(s) to report, first one plotted; allowed: "
                             f"{', '.join(ALL_TASK_METRICS)} (default: f1 and mse, or accuracy)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <sweep>/report, else outputs/report/<time>)")
    parser.add_argument("--no-log", action="store_true", help="do not log a report run to MLflow")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _report(args)
    except (ReportError, LookupError) as err:
        print(f"tinyexp-report: error: {err}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    from tinyexp import tracking

    label, parent, sweep_dir = args.experiment, None, None
    if args.sweep:
        parent, label, sweep_dir = sweep_parent(args.tracking_uri, args.experiment, args.sweep)
        filter_string = f"tags.`mlflow.parentRunId` = '{parent}'"
    elif args.tag:
        filter_string, label = tag_filter(args.tag), " ".join(args.tag)
    else:
        filter_string = args.filter
        label = args.filter or args.experiment
    runs = tracking.find_runs(args.tracking_uri, args.experiment, filter_string)
    finished = [r for r in runs if r["status"] == "FINISHED"]
    records = records_from_mlflow(finished)
    if not records:
        raise ReportError(f"no finished tinyexp runs match the selection ({label!r}) in "
                          f"experiment {args.experiment!r}")
    metrics = task_metrics(records, args.metric)
    out = args.out
    if out is None:
        out = sweep_dir / "report" if sweep_dir else \
            Path("outputs", "report", time.strftime("%Y-%m-%d_%H-%M-%S"))
    files = write_report(records, out, metrics, f"tinyexp sensitivity report: {label}")
    print(compact_table(records, metrics[0]))
    others = len(runs) - len(finished)
    if others:
        print(f"({others} selected runs not FINISHED are left out)")
    print(f"wrote {', '.join(p.name for p in files)} to {out}")
    if not args.no_log:
        tags = {"tinyexp.report.selection": label, "tinyexp.report.runs": str(len(records))}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = tracking.log_report_run(args.tracking_uri, args.experiment, f"report {label}",
                                         tags, files)
        print(f"report run: {run_id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
