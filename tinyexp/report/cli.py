"""``tinyexp-report`` (``python -m tinyexp.report``): the sensitivity report of MLflow runs.

    tinyexp-report                          # every finished run of experiment "tinyexp"
    tinyexp-report --sweep latest           # the newest multirun or search
    tinyexp-report --sweep multirun/2026-11-23/12-00-00
    tinyexp-report --tag tinyexp.arch=cnn --tag tinyexp.quant=int8

writes the files of :func:`write_report` into ``--out``, prints the compact table and logs the
files to a new MLflow run (tag ``tinyexp.role=report``), so the UI shows them. MLflow and
matplotlib load once a report is written, not for ``--help``.

A bad option is one line on stderr, ``tinyexp: error: <option>: <what is wrong>``, and exit
status 2, as for ``python -m tinyexp``; ``--tracking-uri`` and ``--out`` are checked before
any run is read or logged, and a URL's password is never echoed (``user:***@host``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tinyexp.config import ALL_TASK_METRICS
from tinyexp.files import atomic_write
from tinyexp.redact import redact
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line format of every tinyexp error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        found = re.match(r"argument (-[^/:\s]+)[^:]*: (.*)", message)
        if found:
            key, text = found.groups()
        elif message.startswith("unrecognized arguments: "):
            key = message.removeprefix("unrecognized arguments: ").split()[0]
            text = "unknown option or argument; see tinyexp-report --help"
        else:
            key, text = self.prog, message
        _fail(key, text)


def _fail(key: str, text: str) -> None:
    print(redact(f"tinyexp: error: {key}: {text}"), file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    parser.add_argument("--metric", action="append", default=None, choices=ALL_TASK_METRICS,
                        help=f"task metric(s) to report, first one plotted; allowed: "
                             f"{', '.join(ALL_TASK_METRICS)} (default: f1 and mse, or accuracy)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <sweep>/report, else outputs/report/<time>)")
    parser.add_argument("--no-log", action="store_true", help="do not log a report run to MLflow")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``tinyexp-report``: write the report of the selected runs; 2 on a bad option or
    selection, with one line ``tinyexp: error: <option>: ...`` on stderr."""
    args = _parser().parse_args(argv)
    try:
        return _report(args)
    except ReportError as err:
        if os.environ.get("TINYEXP_DEBUG"):
            import traceback

            print(redact("".join(traceback.format_exception(err))), file=sys.stderr, end="")
        print(redact(f"tinyexp: error: {err}"), file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- option checks

# MLflow's own stores, should its registry of tracking stores not be readable.
_MLFLOW_SCHEMES = ("", "file", "databricks", "databricks-uc", "uc", "http", "https",
                   "postgresql", "mysql", "sqlite", "mssql")
_DB_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")


def _tracking_schemes() -> set[str]:
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry)  # plugins register their schemes here
    except (ImportError, AttributeError):
        return set(_MLFLOW_SCHEMES)


def _scheme(uri: str) -> str:
    """The store's scheme as MLflow reads it: ``postgresql+psycopg2://`` -> ``postgresql``,
    a path (or a Windows drive letter) -> ``""``."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # C:/runs
        return ""
    database = scheme.split("+", 1)[0]
    return database if database in _DB_SCHEMES else scheme


def check_tracking_uri(uri: str, key: str) -> None:
    """Raise ReportError (naming ``key``) unless MLflow can open a store at ``uri``: a known
    scheme, a database driver that is installed, a folder that exists. Nothing is created.
    """
    shown = redact(uri)
    if not uri.strip():
        raise ReportError(f"{key}: must not be empty; give e.g. sqlite:///mlflow.db, "
                          "http://host:5000 or a folder")
    scheme = _scheme(uri)
    # MLflow's own schemes need no MLflow import (a bad option fails in well under a second);
    # only another scheme asks MLflow's registry, where plugins add theirs.
    schemes = set(_MLFLOW_SCHEMES) if scheme in _MLFLOW_SCHEMES else _tracking_schemes()
    if scheme not in schemes:
        known = ", ".join(f"{s}://" for s in sorted(schemes) if s)
        raise ReportError(f"{key}: {shown!r} has the unknown scheme {scheme!r}; MLflow takes "
                          f"a folder or one of {known}")
    if scheme in _DB_SCHEMES:
        _check_database(uri, key)
    elif scheme in ("", "file"):
        path = Path(uri.removeprefix("file://") if scheme == "file" else uri)
        if path.exists() and not path.is_dir():
            raise ReportError(f"{key}: {shown} is a file; MLflow's file store is a folder "
                              "(for a database give sqlite:///path/to/mlflow.db)")


def _check_database(uri: str, key: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = redact(uri)
    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ReportError(f"{key}: {shown!r} is not a database URL SQLAlchemy can use "
                          f"({redact(str(err).splitlines()[0])})") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        driver = getattr(err, "name", None) or url.get_driver_name()
        raise ReportError(f"{key}: the {url.get_backend_name()} driver {driver!r} is not "
                          f"installed, so {shown} cannot be opened; install it or use "
                          "another store") from None
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ReportError(f"{key}: {shown} is an in-memory database, which holds no runs; "
                              "give a file, e.g. sqlite:///mlflow.db")
        path = Path(url.database)
        if path.is_dir():
            raise ReportError(f"{key}: {path} is a folder, not an SQLite database file")
        if not path.absolute().parent.is_dir():
            raise ReportError(f"{key}: the folder of {path} does not exist")


def check_out_dir(out: Path, key: str = "--out") -> None:
    """Raise ReportError (naming ``key``) unless the report's folder ``out`` is a folder that
    exists or can be created, and can be written. Leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"{key}: {out} is a file; give a folder (the report writes several "
                          "files into it)")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ReportError(f"{key}: cannot create {out}: {existing} is a file, not a folder")
    try:  # os.access says yes to root everywhere: try it
        os.rmdir(tempfile.mkdtemp(prefix=".tinyexp-report-", dir=existing))
    except OSError as err:
        raise ReportError(f"{key}: cannot write {out}: creating a folder in {existing} fails "
                          f"({err.strerror})") from None


# ----------------------------------------------------------------------------- the command


def _report(args: argparse.Namespace) -> int:
    if not args.experiment.strip():
        raise ReportError("--experiment: must not be empty")
    uri_key = "--tracking-uri" if args.tracking_uri is not None else "MLFLOW_TRACKING_URI"
    uri = args.tracking_uri if args.tracking_uri is not None else \
        os.environ.get("MLFLOW_TRACKING_URI")
    if uri is not None:
        check_tracking_uri(uri, uri_key)
    if args.out is not None:
        check_out_dir(args.out)

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    select = "--sweep" if args.sweep else "--tag" if args.tag else \
        "--filter" if args.filter else "--experiment"
    try:
        runs, label, parent, sweep_dir = _select(args)
    except LookupError as err:  # tinyexp.tracking.find_runs: no experiment, bad filter
        key = "--experiment" if str(err).startswith("no MLflow experiment") else select
        raise ReportError(f"{key}: {err}") from None
    except (MlflowException, SQLAlchemyError) as err:  # server down, file not a database, ...
        raise ReportError(f"{uri_key}: cannot read runs from {redact(uri or 'the default store')}: "
                          f"{str(err).strip().splitlines()[0]}") from None
    finished = [r for r in runs if r["status"] == "FINISHED"]
    records = records_from_mlflow(finished)
    if not records:
        raise ReportError(f"{select}: no finished tinyexp runs match the selection ({label!r}) "
                          f"in experiment {args.experiment!r}")
    metrics = task_metrics(records, args.metric)
    out = args.out
    if out is None:
        out = sweep_dir / "report" if sweep_dir else \
            Path("outputs", "report", time.strftime("%Y-%m-%d_%H-%M-%S"))
        check_out_dir(out)
    try:
        files = write_report(records, out, metrics, f"tinyexp sensitivity report: {label}")
    except OSError as err:  # e.g. the disk filled up
        raise ReportError(f"--out: cannot write the report into {out}: {err}") from None
    print(compact_table(records, metrics[0]))
    others = len(runs) - len(finished)
    if others:
        print(f"({others} selected runs not FINISHED are left out)")
    print(f"wrote {', '.join(p.name for p in files)} to {out}")
    if not args.no_log:
        tags = {"tinyexp.report.selection": label, "tinyexp.report.runs": str(len(records))}
        if parent:
            tags["mlflow.parentRunId"] = parent
        from tinyexp import tracking

        run_id = tracking.log_report_run(args.tracking_uri, args.experiment, f"report {label}",
                                         tags, files)
        print(f"report run: {run_id}", flush=True)
    return 0


def _select(args: argparse.Namespace) -> tuple[list[dict], str, str | None, Path | None]:
    """The runs the options select, a label for them, the sweep's parent run and folder."""
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
    return tracking.find_runs(args.tracking_uri, args.experiment, filter_string), label, \
        parent, sweep_dir
