"""The per-layer sensitivity report: table, plot, files, and the analysis of a real run."""

from __future__ import annotations

import csv
import json

import pytest
from mlflow.tracking import MlflowClient
from support import TINY, run_cli

from tinyexp.report.layers import layer_table, plot_layer_sensitivity, write_layer_report

ROWS = [{"group": "(none)", "width": 0, "kept": 0, "ratio": 0.0, "mse": 0.1, "mse_delta": 0.0},
        {"group": "qkv", "width": 96, "kept": 48, "ratio": 0.5, "mse": 0.2, "mse_delta": 0.1},
        {"group": "qkv", "width": 96, "kept": 96, "ratio": 0.9, "mse": 0.1, "mse_delta": 0.0}]


def test_layer_table_and_plot_say_when_a_ratio_cuts_nothing(tmp_path, is_png):
    table = layer_table(ROWS, "mse")
    qkv = next(line for line in table.splitlines() if line.startswith("qkv"))
    assert qkv.split() == ["qkv", "96", "+0.1", "kept", "all"]  # not "+0" for a cut of nothing
    assert "mse delta @0.5" in table and "(mse unpruned: 0.1;" in table
    assert is_png(plot_layer_sensitivity(ROWS, "mse", tmp_path / "l.png").read_bytes())


def test_write_layer_report_writes_csv_and_png_and_prints_the_table(tmp_path, capsys, is_png):
    files = write_layer_report(ROWS, "mse", tmp_path)
    assert files == [tmp_path / "layer_sensitivity.csv", tmp_path / "layer_sensitivity.png"]
    with open(files[0]) as f:
        assert [r["group"] for r in csv.DictReader(f)] == ["(none)", "qkv", "qkv"]
    assert is_png(files[1].read_bytes())
    assert capsys.readouterr().out == layer_table(ROWS, "mse") + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in files]


@pytest.mark.slow  # ~20 s: the slow tier (the fast tier stays under 10 minutes)
def test_layer_analysis_writes_its_plot_and_logs_drops_per_group(tmp_path, is_png):
    result = run_cli([*TINY, "analysis=layers", "analysis.ratios=[0.25,0.5]", "hydra.run.dir=out",
                      "cache_dir=cache"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per-layer sensitivity (mse unpruned:" in result.stdout
    assert is_png((tmp_path / "out" / "layer_sensitivity.png").read_bytes())
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
