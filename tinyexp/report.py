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
The work is split by kind: :mod:`tinyexp.report_runs` (selecting runs, table rows),
:mod:`tinyexp.report_tables` (tables and formatting) and :mod:`tinyexp.report_plots`
(plots); their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tinyexp.config import ALL_TASK_METRICS
from tinyexp.report_plots import (
    PLOTS,
    pareto_front,
    plot_latency_vs_size,
    plot_layer_sensitivity,
    plot_metric_vs_ratio,
    plot_metric_vs_size,
)
from tinyexp.report_runs import (
    COSTS,
    LOWER_IS_BETTER,
    STAGES,
    Record,
    ReportError,
    records_from_dir,
    records_from_mlflow,
    sweep_parent,
    table_rows,
    tag_filter,
    task_metrics,
)
from tinyexp.report_tables import (
    _write_text,
    compact_table,
    layer_table,
    to_html,
    to_markdown,
    write_rows_csv,
)

__all__ = [
    "COSTS", "LOWER_IS_BETTER", "PLOTS", "STAGES", "MultirunSummary", "Record", "ReportError",
    "compact_table", "layer_table", "main", "pareto_front", "plot_latency_vs_size",
    "plot_layer_sensitivity", "plot_metric_vs_ratio", "plot_metric_vs_size",
    "print_sweep_summary", "records_from_dir", "records_from_mlflow", "sweep_parent",
    "tag_filter", "table_rows", "task_metrics", "to_html", "to_markdown", "write_report",
    "write_rows_csv",
]


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
