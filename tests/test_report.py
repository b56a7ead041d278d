"""Reports: the table and plots from MLflow runs, the multirun summary, the CLI's errors."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from support import ROOT, TINY, run_cli, run_report

from tinyexp import report
from tinyexp.report import Record, pareto_front, records_from_dir, table_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The multirun of the issue, shrunk: prune=none has no fine-tuning epochs to shrink.
SWEEP = ["-m", "arch=cnn,lstm", "prune=none,l1", "trainer=smoke", "dataset.train_steps=640",
         "dataset.test_steps=640", "measure.latency_warmup=1", "measure.latency_runs=5",
         "cache_dir=cache", "hydra.sweep.dir=sweep"]


def _record(name, arch, ratio, quant, f1, size, base_f1=0.8, base_size=1000.0):
    stage = "quantized" if quant != "none" else "pruned" if ratio else "baseline"
    metrics = {"baseline/params": 100.0, "baseline/f1": base_f1, "baseline/size_bytes": base_size,
               "baseline/flash_bytes": base_size, "baseline/latency_ms": 0.02}
    if stage != "baseline":
        metrics.update({f"{stage}/params": 50.0, f"{stage}/f1": f1, f"{stage}/size_bytes": size,
                        f"{stage}/flash_bytes": size, f"{stage}/latency_ms": 0.01})
        if stage == "quantized" and ratio:
            metrics["pruned/params"] = 50.0
    return Record(name, "sensors", arch, "l1" if ratio else "none", ratio, quant, metrics)


RECORDS = [
    _record("cnn-base", "cnn", 0.0, "none", 0.8, 1000.0),
    _record("cnn-p50", "cnn", 0.5, "none", 0.7, 400.0),
    _record("cnn-p50-int8", "cnn", 0.5, "int8", 0.72, 150.0),
    _record("lstm-p50", "lstm", 0.5, "none", 0.5, 500.0, base_f1=0.6, base_size=1200.0),
]


# ----------------------------------------------------------------------------- units


@pytest.mark.parametrize(("lower", "expected"), [(False, [0, 1, 3]), (True, [0])])
def test_pareto_front_keeps_points_nothing_beats(lower, expected):
    points = [(100.0, 0.5), (200.0, 0.7), (300.0, 0.6), (400.0, 0.9)]
    assert pareto_front(points, lower_is_better=lower) == expected


def test_rows_compare_the_final_stage_with_the_runs_own_baseline():
    rows = {row["run"]: row for row in table_rows(RECORDS, ["f1"])}
    assert rows["cnn-base"]["stage"] == "baseline"
    assert rows["cnn-p50-int8"]["stage"] == "quantized"
    assert rows["cnn-p50-int8"]["f1_delta"] == pytest.approx(0.72 - 0.8)
    assert rows["cnn-p50-int8"]["size_bytes_change_pct"] == pytest.approx(-85.0)
    # the LSTM is compared with its own baseline, not the CNN's
    assert rows["lstm-p50"]["f1_delta"] == pytest.approx(0.5 - 0.6)
    assert rows["lstm-p50"]["size_bytes_change_pct"] == pytest.approx(100 * (500 - 1200) / 1200)
    assert rows["lstm-p50"]["macs"] is None and rows["lstm-p50"]["macs_change_pct"] is None


def test_write_report_writes_table_formats_and_plots(tmp_path):
    files = report.write_report(RECORDS, tmp_path, ["f1"], "unit report")
    assert sorted(p.name for p in files) == sorted(
        ["sensitivity.md", "sensitivity.csv", "sensitivity.html", *report.PLOTS])
    for name in report.PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    with open(tmp_path / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["cnn-base", "cnn-p50", "cnn-p50-int8", "lstm-p50"]
    markdown = (tmp_path / "sensitivity.md").read_text()
    assert "| cnn-p50-int8 | cnn | l1 0.5 | int8 | 0.72 (-0.080) |" in markdown
    assert "150 (-85.0%)" in markdown
    page = (tmp_path / "sensitivity.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<td>lstm-p50</td>" in page
    assert not list(tmp_path.glob(".*.tmp")), "no half-written file left behind"


def test_unknown_metric_is_refused_with_the_allowed_ones():
    with pytest.raises(report.ReportError, match=r"--metric: 'accuracy' .* allowed: f1"):
        report.task_metrics(RECORDS, ["accuracy"])


def test_records_from_a_multirun_folder_name_the_jobs_without_results(tmp_path):
    for job, ratio in (("0", 0.25), ("1", 0.5)):
        folder = tmp_path / job
        folder.mkdir()
        OmegaConf.save(OmegaConf.create({
            "dataset": {"name": "sensors"}, "arch": {"name": "cnn"},
            "prune": {"name": "l1", "ratio": ratio},
            "quant": {"name": "qat", "weight_bits": 4, "act_bits": 8}}),
            folder / "config.yaml")
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(
        {"baseline/params": 10, "baseline/f1": 0.8, "pruned/params": 5, "pruned/f1": None}))
    records, missing = records_from_dir(tmp_path)
    assert missing == ["1"]
    assert [(r.name, r.stage, r.ratio, r.quant) for r in records] == [
        ("sensors-cnn-l1@0.25-qat-w4a8", "pruned", 0.25, "qat-w4a8")]
    assert math.isnan(records[0].final("f1"))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli(SWEEP, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_multirun_ends_with_the_compact_table(sweep):
    _, result = sweep
    summary = result.stdout[result.stdout.index("4 runs in"):]
    for name in ("sensors-cnn-none-none", "sensors-cnn-l1@0.5-none", "sensors-lstm-none-none",
                 "sensors-lstm-l1@0.5-none"):
        assert name in summary
    assert "full report: tinyexp-report --sweep" in summary


def test_report_on_a_multirun_writes_files_and_logs_a_report_run(sweep):
    cwd, _ = sweep
    result = run_report(["--sweep", "sweep", "--out", "report"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    out = cwd / "report"
    for name in ("sensitivity.md", "sensitivity.csv", "sensitivity.html", *report.PLOTS):
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
    assert {f"report/{n}" for n in ("sensitivity.html", *report.PLOTS)} <= logged
    # the CSV holds what MLflow holds for each job
    by_name = {r["run"]: r for r in rows}
    job = client.get_run(by_name["sensors-cnn-l1@0.5-none"]["run_id"])
    assert float(by_name["sensors-cnn-l1@0.5-none"]["macs"]) == job.data.metrics["pruned/macs"]


def test_latest_sweep_is_found_in_mlflow_and_reported_into_its_folder(sweep):
    cwd, _ = sweep
    result = run_report(["--sweep", "latest", "--no-log"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report run:" not in result.stdout
    with open(cwd / "sweep" / "report" / "sensitivity.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.parametrize(("args", "key"), [
    (["--sweep", "no/such/folder"], "--sweep"),
    (["--metric", "accuracy"], "--metric"),
    (["--tag", "tinyexp.arch"], "--tag"),
    (["--experiment", "nothing-here"], "no MLflow experiment"),
    (["--tag", "tinyexp.arch=resnet"], "no finished tinyexp runs"),
    (["--filter", "metrics.f1 >>> 3"], "MLflow rejects the filter"),
])
def test_bad_selection_fails_with_one_line_and_logs_nothing(sweep, args, key):
    cwd, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp").experiment_id
    before = len(client.search_runs([experiment]))
    result = run_report([*args, "--out", "bad"], cwd)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("tinyexp-report: error:"), result.stderr
    assert key in errors[0]
    assert not (cwd / "bad").exists()
    assert len(client.search_runs([experiment])) == before


def test_failed_job_still_gets_the_summary_of_the_others(tmp_path):
    # Lightning rejects the second accelerator inside its job; tinyexp does not check it.
    result = run_cli(["-m", *TINY, "trainer.accelerator=cpu,no_such_device", "cache_dir=cache",
                      "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode != 0
    assert "1 run in" in result.stdout and "sensors-cnn-l1@0.5-none" in result.stdout
    assert "jobs without results (failed, pruned by a search, or interrupted): 1" in result.stdout


def test_report_help_does_not_import_torch_or_mlflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([sys.executable, "-m", "tinyexp.report", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--sweep" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert imported and not imported & {"torch", "pytorch_lightning", "mlflow", "matplotlib"}


def test_layer_analysis_writes_its_plot_and_logs_drops_per_group(tmp_path):
    result = run_cli([*TINY, "analysis=layers", "analysis.ratios=[0.25,0.5]", "hydra.run.dir=out",
                      "cache_dir=cache"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per-layer sensitivity (mse unpruned:" in result.stdout
    data = (tmp_path / "out" / "layer_sensitivity.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    with open(tmp_path / "out" / "layer_sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    groups = ["encoder.0.0", "encoder.1.0", "decoder.0.0", "decoder.1.0"]
    assert [r["group"] for r in rows] == ["(none)"] + [g for g in groups for _ in (0, 1)]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tinyexp").experiment_id])[0]
    for row in rows[1:]:
        key = f"layers/{row['group']}/r{round(100 * float(row['ratio'])):02d}/mse_delta"
        assert run.data.metrics[key] == pytest.approx(float(row["mse_delta"]))
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "layer_sensitivity")}
    assert logged == {"layer_sensitivity/layer_sensitivity.png",
                      "layer_sensitivity/layer_sensitivity.csv"}
    # the analysis leaves the run's own stages alone
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "pruned/params" in metrics and metrics["pruned/ratio_asked"] == 0.5


def test_report_is_installed_as_a_console_script():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tinyexp-report"] == "tinyexp.report:main"


def test_layer_table_and_plot_say_when_a_ratio_cuts_nothing(tmp_path):
    rows = [{"group": "(none)", "width": 0, "kept": 0, "ratio": 0.0, "mse": 0.1, "mse_delta": 0.0},
            {"group": "qkv", "width": 96, "kept": 48, "ratio": 0.5, "mse": 0.2, "mse_delta": 0.1},
            {"group": "qkv", "width": 96, "kept": 96, "ratio": 0.9, "mse": 0.1, "mse_delta": 0.0}]
    table = report.layer_table(rows, "mse")
    assert "+0.100" in table and "kept all" in table and "+0.000" not in table
    assert report.plot_layer_sensitivity(rows, "mse", tmp_path / "l.png").read_bytes()[:8] \
        == PNG_MAGIC
