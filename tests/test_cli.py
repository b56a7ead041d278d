"""The command line as a user meets it: help, bad input, one job, a sweep, a failing job."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient
from support import ROOT, TINY, run_cli


def _runs(cwd):
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp")
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def test_help_lists_groups_without_importing_torch(tmp_path):
    result = run_cli(["--help"], tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    for group in ("dataset:", "arch:", "prune:", "quant:", "trainer:", "logger:"):
        assert group in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert imported, "no import trace"
    assert not imported & {"torch", "pytorch_lightning", "mlflow"}


@pytest.mark.parametrize(("args", "key"), [
    (["prune.ratio=1.5"], "prune.ratio"),
    (["trainer.max_epochs=-3"], "trainer.max_epochs"),
    (["dataset=skab", "dataset.data_dir=nowhere"], "dataset.data_dir"),
    (["-m", "prune.ratio=0.25,1.5"], "prune.ratio"),  # the bad point of a sweep, caught up front
])
def test_bad_input_fails_fast_with_one_line_and_records_nothing(tmp_path, args, key):
    result = run_cli([*args, "cache_dir=cache"], tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"tinyexp: error: {key}:"), result.stderr
    assert not list((tmp_path / "cache").rglob("weights.pt")), "nothing may be trained"
    assert _runs(tmp_path)[1] == []


def test_unknown_option_names_the_group(tmp_path):
    result = run_cli(["arch=resnet9000"], tmp_path)
    assert result.returncode != 0
    assert "arch" in result.stderr and "cnn" in result.stderr  # Hydra lists the options


@pytest.fixture(scope="module")
def one_job(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("job")
    result = run_cli([*TINY, "hydra.run.dir=out", "cache_dir=cache"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_job_writes_metrics_json_with_stage_prefixes(one_job):
    cwd, _ = one_job
    metrics = json.loads((cwd / "out" / "metrics.json").read_text())
    for stage in ("baseline", "pruned"):
        for name in ("mse", "f1", "far", "mar", "roc_auc", "params", "macs", "size_bytes",
                     "latency_ms", "latency_p90_ms"):
            assert f"{stage}/{name}" in metrics, f"{stage}/{name}"
    assert metrics["pruned/params"] < metrics["baseline/params"]
    assert metrics["pruned/macs"] < metrics["baseline/macs"]
    assert metrics["pruned/size_bytes"] == (cwd / "out" / "pruned.onnx").stat().st_size
    assert metrics["pruned/ratio_asked"] == 0.5
    assert 0 < metrics["pruned/param_reduction_pct"] < 100


def test_job_logs_one_finished_mlflow_run(one_job):
    cwd, result = one_job
    client, runs = _runs(cwd)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "sensors-cnn-l1@0.5-none"
    assert run.data.params["prune.ratio"] == "0.5"
    assert run.data.params["arch.name"] == "cnn"
    assert run.data.tags["tinyexp.baseline_cache"] == "miss"
    metrics = json.loads((cwd / "out" / "metrics.json").read_text())
    for key, value in metrics.items():
        if value is not None:
            assert run.data.metrics[key] == pytest.approx(value), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "baseline.onnx", "pruned.onnx"} <= artifacts
    assert "sensors-cnn-l1@0.5-none" in result.stdout  # the console table


@pytest.mark.slow  # end to end, ~20 s: the slow tier (the fast tier stays under 10 minutes)
def test_same_seed_gives_same_metrics(one_job, tmp_path):
    cwd, _ = one_job
    # A fresh cache: the baseline is trained again from scratch, not reloaded.
    result = run_cli([*TINY, "hydra.run.dir=out", "cache_dir=cache2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((cwd / "out" / "metrics.json").read_text())
    second = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in first:
        if "latency" not in key:
            assert second[key] == pytest.approx(first[key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow  # end to end, ~10 s: the slow tier
def test_sweep_groups_runs_and_trains_one_baseline(tmp_path):
    result = run_cli(["-m", *TINY, "prune.ratio=0.25,0.75", "cache_dir=cache",
                      "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("tinyexp.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [r.data.tags["tinyexp.baseline_cache"] for r in children] == ["miss", "hit"]
    assert len(list((tmp_path / "cache" / "baselines").iterdir())) == 1
    assert {r.info.run_name for r in children} == {"sensors-cnn-l1@0.25-none",
                                                   "sensors-cnn-l1@0.75-none"}


@pytest.mark.slow  # end to end, ~20 s: the slow tier (the fast tier stays under 10 minutes)
def test_exception_inside_a_job_marks_its_run_failed(tmp_path):
    # A failure while running, not bad input: the training's callback raises on purpose.
    result = run_cli([*TINY, "callbacks.early_stopping._target_=failing_callback."
                      "FailingEarlyStopping", "cache_dir=cache"], tmp_path,
                     env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("tinyexp: job failed: RuntimeError")
    _, runs = _runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "FailingEarlyStopping" in runs[0].data.tags["tinyexp.error"]


@pytest.mark.parametrize("args", [
    # ~15 s each: the LSTM and transformer in the slow tier (the fast tier stays under 10 min)
    pytest.param(["arch=lstm"], marks=pytest.mark.slow),
    pytest.param(["arch=transformer"], marks=pytest.mark.slow),
    ["dataset=digits", "arch=custom_cnn"],
], ids=["lstm", "transformer", "digits-custom_cnn"])
def test_every_architecture_runs_end_to_end(tmp_path, args):
    tiny = TINY if "dataset=digits" not in args else [a for a in TINY if "_steps" not in a]
    result = run_cli([*tiny, *args, "logger=none", "hydra.run.dir=out", "cache_dir=cache"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pruned/params"] < metrics["baseline/params"]
    assert metrics["pruned/macs"] < metrics["baseline/macs"]
    task_metric = "accuracy" if "dataset=digits" in args else "f1"
    assert 0 <= metrics[f"pruned/{task_metric}"] <= 1


@pytest.mark.slow  # end to end, ~20 s: the slow tier (the fast tier stays under 10 minutes)
def test_quantized_stage_is_measured_on_the_runtime_artifact(tmp_path):
    result = run_cli([*TINY, "quant=int8", "hydra.run.dir=out", "cache_dir=cache"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantized/size_bytes"] == (out / "quantized.onnx").stat().st_size
    # Conv weights int8; the transposed convolutions have no int8 kernel and stay float32.
    assert metrics["quantized/weight_bytes"] < 0.75 * metrics["pruned/weight_bytes"]
    assert metrics["quantized/size_reduction_pct"] > metrics["pruned/size_reduction_pct"]
    assert metrics["quantized/macs"] == metrics["pruned/macs"]
    # Metrics come from running the int8 file: close to the float model's, not identical.
    assert metrics["quantized/mse"] != metrics["pruned/mse"]
    assert metrics["quantized/mse"] == pytest.approx(metrics["pruned/mse"], rel=0.2)
    assert metrics["quantized/f1_delta"] == pytest.approx(
        metrics["quantized/f1"] - metrics["baseline/f1"])
    # ... and that fallback is said, not hidden.
    assert metrics["quantized/float_compute_ops"] == 2
    _, runs = _runs(tmp_path)
    assert runs[0].info.run_name == "sensors-cnn-l1@0.5-int8"
    assert runs[0].data.tags["tinyexp.quant_float_ops"] == "ConvTranspose x2"


@pytest.mark.slow  # end to end, ~20 s: the slow tier (the fast tier stays under 10 minutes)
def test_qat_reports_file_bytes_and_packed_weight_bytes(tmp_path):
    result = run_cli(["-m", *TINY, "quant=qat", "quant.epochs=1", "quant.weight_bits=4,8",
                      "logger=none", "cache_dir=cache", "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    w4, w8 = (json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
              for job in ("0", "1"))
    # Sub-8-bit weights travel in int8 containers: the file is the same size, the packed
    # weights are not.
    assert w4["quantized/size_bytes"] == pytest.approx(w8["quantized/size_bytes"], rel=0.02)
    assert w4["quantized/weight_bytes"] < 0.7 * w8["quantized/weight_bytes"]
    assert (tmp_path / "sweep" / "0" / "quantized.onnx").is_file()
    assert "qat-w4a8" in result.stdout
