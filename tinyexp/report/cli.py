"""``tinyexp-report`` (``python -m tinyexp.report``): the sensitivity report of MLflow runs.

    tinyexp-report                          # every finished run of experiment "tinyexp"
    tinyexp-report --sweep latest           # the newest multirun or search
    tinyexp-report --sweep multirun/2026-11-23/12-00-00
    tinyexp-report --tag tinyexp.arch=cnn --tag tinyexp.quant=int8

writes the files of :func:`write_report` into ``--out``, prints the compact table and logs the
files to a new MLflow run (tag ``tinyexp.role=report``), so the UI shows them. MLflow and
matplotlib load once a report is written, not for ``--help``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tinyexp.config import ALL_TASK_METRICS
from tinyexp.files import atomic_write
from tinyexp.report.plots import (
    PLOTS,
    plot_latency_vs_size,
    plot_metric_vs_ratio,
    plot_metric_vs_size,
)
from tinyexp.report.runs import (
    Record,
    ReportError,
    records_from_mlflow,
    sweep_parent,
    table_rows,
    tag_filter,
    task_metrics,
)
from tinyexp.report.tables import compact_table, to_html, to_markdown, write_rows_csv

# ----------------------------------------------------------------------------- the report


def write_report(records: list[Record], out_dir: Path, metrics: Sequence[str],
                 title: str) -> list[Path]:
    """Write the report of ``records`` into ``out_dir``; return the files written:

    * ``sensitivity.md`` / ``.csv`` / ``.html``: one row per configuration (dataset,
      architecture, pruning, quantization, number of seeds; runs that differ only by seed
      merged) with the task metrics, parameters, MACs, latency, file size, flash and RAM of
      its final stage, each next to its change against the run's own float baseline
      (``<metric>_delta``; ``<cost>_reduction_pct``, positive = smaller or faster); over
      several seeds the mean ± the half-width of its 95% interval (CSV: ``<column>_ci95``);
    * ``metric_vs_ratio.png`` (sensitivity curves per architecture, from the float baseline
      at ratio 0), ``metric_vs_size.png`` (with the Pareto front) and ``latency_vs_size.png``,
      for the first of ``metrics``, with error bars over seeds.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(records, metrics)
    primary = metrics[0]
    plots = [plot_metric_vs_ratio(records, primary, out_dir / PLOTS[0]),
             plot_metric_vs_size(records, primary, out_dir / PLOTS[1]),
             plot_latency_vs_size(records, out_dir / PLOTS[2])]
    atomic_write(out_dir / "sensitivity.md", f"# {title}\n\n" + to_markdown(rows, metrics))
    write_rows_csv(rows, out_dir / "sensitivity.csv")
    atomic_write(out_dir / "sensitivity.html", to_html(rows, metrics, title, plots))
    return [out_dir / "sensitivity.md", out_dir / "sensitivity.csv",
            out_dir / "sensitivity.html", *plots]


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
    """``tinyexp-report``: write the report of the selected runs; 2 on a bad selection."""
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

