"""The MLflow UI in a real browser: a multirun's runs with their metrics, a job's training
curve, and a report plot.

Slow tier (``make test-browser``, or ``pytest -m slow tests/test_mlflow_ui.py``): a small
multirun and its report are logged to a private sqlite store, ``mlflow server`` serves it on
localhost, and Debian's headless Chromium looks at it. The screenshots are kept in
``test-artifacts/mlflow_ui/`` (``$TINYEXP_TEST_ARTIFACTS/mlflow_ui/`` if set).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from browser import (
    artifacts_dir,
    chrome,
    keep_page_on_failure,
    mlflow_server,
    require_browser,
    screenshot,
    wait_for,
)
from mlflow_pages import (
    close_assistant,
    expand_run,
    image_sha256,
    metric_cell,
    metric_chart,
    metric_headers,
    run_link,
    run_row,
    search_metric_charts,
    set_columns,
    shown_images,
    shows_value,
    widen_column,
)
from support import TINY, run_cli, run_report

# TINY without its prune.* override: prune=none has no such key (and l1's default fine-tuning
# under trainer=smoke is a few batches only).
JOB = [arg for arg in TINY if not arg.startswith("prune.")]
CHILDREN = ["sensors-cnn-none-none", "sensors-cnn-l1@0.5-none", "sensors-lstm-none-none",
            "sensors-lstm-l1@0.5-none"]
# Metric columns ticked in the runs table (MLflow 3 shows none by default).
METRICS = ["baseline/f1", "pruned/f1", "pruned/roc_auc", "baseline/params", "pruned/params",
           "pruned/size_bytes"]
PLOT = "report/metric_vs_size.png"
# The baseline's validation loss per epoch: logged live by a job that trains it, replayed from
# the cache by one that does not.
CURVE = "curves/baseline/val_loss"
SHOTS = ("mlflow_runs", "mlflow_run_curve", "mlflow_run_curve_cached", "mlflow_report_artifact")


def _multirun_and_report(tmp_path: Path) -> dict[str, Any]:
    """Log a 2x2 multirun and its report to ``tmp_path/mlflow.db``; return what MLflow holds."""
    from mlflow.tracking import MlflowClient

    result = run_cli(["-m", "arch=cnn,lstm", "prune=none,l1", *JOB], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = sorted(tmp_path.glob("multirun/*/*"))
    assert len(sweeps) == 1, sweeps
    report = run_report(["--sweep", str(sweeps[0]), "--out", str(tmp_path / "report")],
                        cwd=tmp_path)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-3000:]
    last = report.stdout.strip().splitlines()[-1]
    assert last.startswith("report run: "), report.stdout[-2000:]
    report_id = last.removeprefix("report run: ").strip()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyexp")
    runs = client.search_runs([experiment.experiment_id])
    roles = {r.info.run_id: r.data.tags.get("tinyexp.role") for r in runs}
    parent_id = (sweeps[0] / ".mlflow_parent_run_id").read_text().strip()
    assert roles[parent_id] == "sweep" and roles[report_id] == "report"
    children = {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent_id and not roles[r.info.run_id]}
    assert sorted(children) == sorted(CHILDREN)
    return {"client": client, "experiment_id": experiment.experiment_id, "parent_id": parent_id,
            "children": children, "report_id": report_id}


def _check_runs_table(driver: Any, url: str, logged: dict[str, Any]) -> None:
    """The runs table lists the four child runs and shows their metric values."""
    children = logged["children"]
    driver.get(f"{url}/#/experiments/{logged['experiment_id']}/runs")
    wait_for(driver, lambda d: run_row(d, logged["parent_id"]), "the sweep's parent run")
    close_assistant(driver)
    expand_run(driver, logged["parent_id"], list(children))
    wait_for(driver, lambda d: all(run_link(d, name) for name in children),
             f"the child runs {', '.join(children)}")
    for name, run in children.items():
        href = run_link(driver, name).get_attribute("href")
        assert href.endswith(f"/runs/{run.info.run_id}"), (name, href)

    set_columns(driver, show=METRICS, hide=["Dataset", "Source", "Models"])
    headers = wait_for(driver, lambda d: len(metric_headers(d)) == len(METRICS)
                       and metric_headers(d), "the metric column headers")
    assert sorted(headers) == sorted(METRICS), headers
    # Wider columns, so that the screenshot shows run names, headers and values in full.
    widen_column(driver, "attributes.`Run Name`", 90)
    for key in METRICS:
        widen_column(driver, f"metrics.`{key}`", 30)

    some = next(iter(children.values())).info.run_id
    wait_for(driver, lambda d: metric_cell(d, some, METRICS[0]) is not None, "metric cells")
    shown = {(name, key): metric_cell(driver, run.info.run_id, key)
             for name, run in children.items() for key in METRICS}
    stored = {(name, key): run.data.metrics.get(key)
              for name, run in children.items() for key in METRICS}
    wrong = {cell: (shown[cell], stored[cell]) for cell in shown
             if shown[cell] is None or not shows_value(shown[cell], stored[cell])}
    assert not wrong, f"(run, metric): (shown, in MLflow): {wrong}"
    # A real number, not just dashes: the pruned CNN's parameter count as MLflow stores it.
    pruned_cnn = children["sensors-cnn-l1@0.5-none"]
    assert shows_value(shown["sensors-cnn-l1@0.5-none", "pruned/params"],
                       pruned_cnn.data.metrics["pruned/params"])
    screenshot(driver, "mlflow_runs.png")


def _baseline_curves(logged: dict[str, Any]) -> dict[str, str]:
    """Every job's run holds the baseline's curves with steps 1..``baseline/epochs``; return
    the name of a job that trained its baseline (``miss``) and of one that reused it (``hit``).
    """
    by_cache: dict[str, str] = {}
    for name, run in logged["children"].items():
        epochs = int(run.data.metrics["baseline/epochs"])
        assert epochs >= 1, (name, epochs)
        for key in (CURVE, CURVE.replace("val_loss", "train_loss")):
            history = logged["client"].get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (name, key)
        by_cache.setdefault(run.data.tags["tinyexp.baseline_cache"], name)
    assert sorted(by_cache) == ["hit", "miss"], by_cache  # each arch: trained once, reused once
    return by_cache


def _check_curve_chart(driver: Any, url: str, logged: dict[str, Any], name: str,
                       shot: str) -> None:
    """The job's Model metrics tab charts ``CURVE`` with one point per epoch it trained."""
    run = logged["children"][name]
    epochs = int(run.data.metrics["baseline/epochs"])
    history = sorted(logged["client"].get_metric_history(run.info.run_id, CURVE),
                     key=lambda m: m.step)
    driver.get(f"{url}/#/experiments/{logged['experiment_id']}/runs/{run.info.run_id}"
               "/model-metrics")
    search_metric_charts(driver, CURVE)

    def drawn(d: Any) -> dict[str, Any] | None:
        chart = metric_chart(d, CURVE)
        return chart if chart and chart["markers"] else None

    chart = wait_for(driver, drawn, f"the chart of {CURVE} of run {name}")
    close_assistant(driver)
    assert chart["markers"] == epochs, (name, chart, epochs)  # one point drawn per epoch
    assert chart["steps"], chart
    for steps, values in zip(chart["steps"], chart["values"], strict=True):
        assert steps == list(range(1, epochs + 1)), (name, chart)
        assert values == pytest.approx([m.value for m in history], rel=1e-6), (name, chart)
    screenshot(driver, f"{shot}.png")


def _check_report_plot(driver: Any, url: str, logged: dict[str, Any], tmp_path: Path) -> None:
    """The report run's artifact view shows ``report/metric_vs_size.png``, byte for byte."""
    report_id = logged["report_id"]
    (tmp_path / "download").mkdir()
    local = logged["client"].download_artifacts(report_id, PLOT, str(tmp_path / "download"))
    expected = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    driver.get(f"{url}/#/experiments/{logged['experiment_id']}/runs/{report_id}"
               f"/artifacts/{PLOT}")

    def plot_shown(d: Any) -> bool:
        images = shown_images(d, PLOT)  # loaded and visible, naturalWidth > 0
        return bool(images) and expected in image_sha256(d, [src for src, _, _ in images])

    wait_for(driver, plot_shown, f"an image with the bytes of {PLOT} to load")
    close_assistant(driver)
    assert PLOT in driver.find_element("tag name", "body").text
    screenshot(driver, "mlflow_report_artifact.png")


@pytest.mark.slow
def test_mlflow_ui_lists_multirun_metrics_charts_curves_and_shows_report_plot(
        tmp_path: Path) -> None:
    require_browser()
    for stale in artifacts_dir().glob("mlflow_*"):
        if stale.name.split(".")[0] in SHOTS:
            stale.unlink()
    logged = _multirun_and_report(tmp_path)
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlruns",
                       cwd=tmp_path) as url, chrome() as driver:
        with keep_page_on_failure(driver, "mlflow_runs"):
            _check_runs_table(driver, url, logged)
        trained = _baseline_curves(logged)
        for cache, shot in (("miss", "mlflow_run_curve"), ("hit", "mlflow_run_curve_cached")):
            with keep_page_on_failure(driver, shot):
                _check_curve_chart(driver, url, logged, trained[cache], shot)
        with keep_page_on_failure(driver, "mlflow_report_artifact"):
            _check_report_plot(driver, url, logged, tmp_path)
