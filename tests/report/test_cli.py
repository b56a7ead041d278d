"""``tinyexp-report``: the files it writes, the MLflow run it logs, and its one-line errors
(``tinyexp: error: <option>: ...``, exit status 2, checked before any run is read or logged)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import ROOT, run_report

from tinyexp.report.cli import check_out_dir, check_tracking_uri, main, write_report
from tinyexp.report.plots import PLOTS
from tinyexp.report.runs import ReportError


def test_write_report_writes_table_formats_and_plots(records, tmp_path, is_png):
    files = write_report(records, tmp_path, ["f1"], "unit report")
    assert sorted(p.name for p in files) == sorted(
        ["sensitivity.md", "sensitivity.csv", "sensitivity.html", *PLOTS])
    for name in PLOTS:
        data = (tmp_path / name).read_bytes()
        assert is_png(data) and len(data) > 5000
    with open(tmp_path / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["cnn-base", "cnn-p50", "cnn-p50-int8", "lstm-p50"]
    markdown = (tmp_path / "sensitivity.md").read_text()
    assert markdown.startswith("# unit report\n")
    assert "| cnn-p50-int8 | cnn | l1 0.5 | int8 | 1 | 0.72 (-0.08) |" in markdown
    assert "150 (85.0% smaller)" in markdown
    page = (tmp_path / "sensitivity.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<td>lstm-p50</td>" in page
    assert not list(tmp_path.glob(".*.tmp")), "no half-written file left behind"


def test_report_on_a_multirun_writes_files_and_logs_a_report_run(sweep):
    cwd, _ = sweep
    result = run_report(["--sweep", "sweep", "--out", "report"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    out = cwd / "report"
    for name in ("sensitivity.md", "sensitivity.csv", "sensitivity.html", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    with open(out / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["stage"] for r in rows} == {"baseline", "pruned"}

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    run_id = result.stdout.strip().splitlines()[-1].removeprefix("report run: ")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tinyexp.role"] == "report"
    parent = (cwd / "sweep" / ".mlflow_parent_run_id").read_text().strip()
    assert run.data.tags["mlflow.parentRunId"] == parent
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {f"report/{n}" for n in ("sensitivity.html", *PLOTS)} <= logged
    # the CSV holds what MLflow holds for each job, with the sign of its metrics
    row = next(r for r in rows if r["run"] == "sensors-cnn-l1@0.5-none")
    job = client.get_run(row["run_id"]).data.metrics
    assert float(row["macs"]) == job["pruned/macs"]
    assert float(row["macs_reduction_pct"]) == pytest.approx(job["pruned/macs_reduction_pct"])
    assert float(row["size_bytes_reduction_pct"]) == pytest.approx(
        job["pruned/size_reduction_pct"])
    assert float(row["f1_delta"]) == pytest.approx(job["pruned/f1_delta"])
    assert float(row["macs_reduction_pct"]) > 0


def test_latest_sweep_is_found_in_mlflow_and_reported_into_its_folder(sweep):
    cwd, _ = sweep
    result = run_report(["--sweep", "latest", "--no-log"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report run:" not in result.stdout
    with open(cwd / "sweep" / "report" / "sensitivity.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.parametrize(("args", "start"), [
    (["--sweep", "no/such/folder"], "--sweep: "),
    (["--metric", "accuracy"], "--metric: "),
    (["--tag", "tinyexp.arch"], "--tag: "),
    # ~4 s each (they reach the store): the slow tier (the fast tier stays under 10 minutes)
    pytest.param(["--experiment", "nothing-here"], "--experiment: no MLflow experiment",
                 marks=pytest.mark.slow),
    pytest.param(["--tag", "tinyexp.arch=resnet"], "--tag: no finished tinyexp runs",
                 marks=pytest.mark.slow),
    pytest.param(["--filter", "metrics.f1 >>> 3"], "--filter: MLflow rejects the filter",
                 marks=pytest.mark.slow),
    (["--tracking-uri", "bogus://x"], "--tracking-uri: "),
    (["--out", "/proc/report"], "--out: "),
])
def test_bad_selection_fails_with_one_line_and_logs_nothing(sweep, args, start):
    cwd, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp").experiment_id
    before = len(client.search_runs([experiment]))
    out = [] if "--out" in args else ["--out", "bad"]
    result = run_report([*args, *out], cwd)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"tinyexp: error: {start}"), result.stderr
    assert not (cwd / "bad").exists()
    assert len(client.search_runs([experiment])) == before


@pytest.mark.parametrize(("uri", "text"), [
    ("bogus://x", "unknown scheme 'bogus'"),
    ("", "must not be empty"),
    ("sqlite://", "in-memory"),
    ("sqlite:///no/such/folder/mlflow.db", "does not exist"),
    ("{file}", "is a file"),
])
def test_a_tracking_uri_mlflow_cannot_open_is_refused_up_front(tmp_path, uri, text):
    (tmp_path / "runs.txt").write_text("not a store")
    with pytest.raises(ReportError) as caught:
        check_tracking_uri(uri.format(file=tmp_path / "runs.txt"), "--tracking-uri")
    assert str(caught.value).startswith("--tracking-uri: ") and text in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.txt"]


def test_a_database_password_is_never_echoed():
    if any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("a PostgreSQL driver is installed")
    with pytest.raises(ReportError) as caught:
        check_tracking_uri("postgresql://user:secret@localhost/db", "--tracking-uri")
    assert "secret" not in str(caught.value) and "user:***@localhost" in str(caught.value)


@pytest.mark.parametrize(("out", "text"), [
    ("/proc/report", "cannot write /proc/report"),
    ("{file}", "is a file"),
    ("{file}/sub", "is a file, not a folder"),
])
def test_an_out_folder_that_cannot_be_written_is_refused_before_anything(tmp_path, out, text):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ReportError) as caught:
        check_out_dir(Path(out.format(file=tmp_path / "taken")))
    assert str(caught.value).startswith("--out: ") and text in str(caught.value)
    check_out_dir(tmp_path / "new" / "report")  # creatable: fine, and nothing is created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize(("args", "start"), [
    (["--bogus"], "--bogus: unknown option"),
    (["--sweep"], "--sweep: expected one argument"),
    (["--sweep", "a", "--tag", "k=v"], "--tag: not allowed with argument --sweep"),
    (["--metric", "nope"], "--metric: invalid choice: 'nope'"),
    (["--experiment", " "], "--experiment: must not be empty"),
])
def test_option_errors_are_one_line_in_the_tinyexp_format(capsys, args, start):
    with pytest.raises(SystemExit) as stopped:
        status = main(args)
        raise SystemExit(status)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"tinyexp: error: {start}")


def test_report_help_does_not_import_torch_or_mlflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([sys.executable, "-m", "tinyexp.report", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--sweep" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert imported and not imported & {"torch", "pytorch_lightning", "mlflow", "matplotlib"}


def test_importing_the_package_imports_only_the_standard_library(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("import sys, tinyexp.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'omegaconf', 'hydra', 'matplotlib', 'mlflow', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_report_is_installed_as_a_console_script():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tinyexp-report"] == "tinyexp.report.cli:main"
