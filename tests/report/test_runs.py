"""Selecting runs and the raw table rows: each run against its own baseline, one sign."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from tinyexp.report.runs import (
    ReportError,
    records_from_dir,
    sweep_parent,
    table_rows,
    task_metrics,
)


def test_rows_compare_the_final_stage_with_the_runs_own_baseline(records):
    rows = {row["run"]: row for row in table_rows(records, ["f1"])}
    assert rows["cnn-base"]["stage"] == "baseline"
    assert rows["cnn-p50-int8"]["stage"] == "quantized"
    assert rows["cnn-p50-int8"]["f1_delta"] == pytest.approx(0.72 - 0.8)
    # tinyexp.measure.changes: positive = smaller
    assert rows["cnn-p50-int8"]["size_bytes_reduction_pct"] == pytest.approx(85.0)
    # the LSTM is compared with its own baseline, not the CNN's
    assert rows["lstm-p50"]["f1_delta"] == pytest.approx(0.5 - 0.6)
    assert rows["lstm-p50"]["size_bytes_reduction_pct"] == pytest.approx(
        100 * (1200 - 500) / 1200)
    assert rows["lstm-p50"]["latency_ms_reduction_pct"] == pytest.approx(50.0)  # faster
    assert rows["lstm-p50"]["macs"] is None and rows["lstm-p50"]["macs_reduction_pct"] is None
    assert not any(key.endswith("_change_pct") for key in rows["lstm-p50"])


def test_a_stage_larger_than_its_baseline_has_a_negative_reduction(records):
    grown = records[1]
    grown.metrics["pruned/size_bytes"] = 1200.0
    row = table_rows([grown], ["f1"])[0]
    assert row["size_bytes_reduction_pct"] == pytest.approx(-20.0)


def test_unknown_metric_is_refused_with_the_allowed_ones(records):
    with pytest.raises(ReportError, match=r"--metric: 'accuracy' .* allowed: f1"):
        task_metrics(records, ["accuracy"])


def test_records_from_a_multirun_folder_name_the_jobs_without_results(tmp_path):
    qat = {"_target_": "tinyexp.stages.quant.QATQuant", "name": "qat", "weight_bits": 4,
           "act_bits": 8}
    for job, prune in (("0", {"_target_": "tinyexp.stages.prune.L1Prune", "name": "l1",
                               "ratio": 0.25}),
                       ("1", {"_target_": "tinyexp.stages.prune.L1Prune", "name": "l1",
                              "ratio": 0.5}),
                       ("2", None)):  # prune=none: the group is null
        folder = tmp_path / job
        folder.mkdir()
        OmegaConf.save(OmegaConf.create({
            "dataset": {"name": "sensors"}, "arch": {"name": "cnn"}, "prune": prune,
            "quant": qat if prune else None}), folder / "config.yaml")
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(
        {"baseline/params": 10, "baseline/f1": 0.8, "pruned/params": 5, "pruned/f1": None}))
    (tmp_path / "2" / "metrics.json").write_text(json.dumps(
        {"baseline/params": 10, "baseline/f1": 0.8}))
    records, missing = records_from_dir(tmp_path)
    assert missing == ["1"]
    assert [(r.name, r.stage, r.prune, r.ratio, r.quant) for r in records] == [
        ("sensors-cnn-l1@0.25-qat-w4a8", "pruned", "l1", 0.25, "qat-w4a8"),
        ("sensors-cnn-none-none", "baseline", "none", 0.0, "none")]
    assert math.isnan(records[0].final("f1"))


def test_a_sweep_folder_is_labelled_by_date_and_time_also_when_given_relative(tmp_path,
                                                                             monkeypatch):
    folder = tmp_path / "2026-11-23" / "12-00-00"
    folder.mkdir(parents=True)
    (folder / ".mlflow_parent_run_id").write_text("abc\n")
    monkeypatch.chdir(folder.parent)
    assert sweep_parent(None, "tinyexp", "12-00-00")[:2] == ("abc", "2026-11-23/12-00-00")
    with pytest.raises(ReportError, match="--sweep: nowhere is not a multirun folder"):
        sweep_parent(None, "tinyexp", "nowhere")
