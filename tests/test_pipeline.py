"""The orchestrator: prune settings reach the pruned model, every stage is measured and compared
with the baseline, training curves reach MLflow, the target verdict is right."""

from __future__ import annotations

import json

import onnx
import pytest
from omegaconf import OmegaConf
from support import TINY, compose

from tinyexp.job import fits_target
from tinyexp.pipeline import run

pytestmark = pytest.mark.usefixtures("single_thread")


def _conv_widths(path) -> dict[str, int]:
    """Output channels of every Conv in an ONNX file: the widths the artifact really has."""
    graph = onnx.load(str(path)).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    return {node.input[1]: shapes[node.input[1]][0]
            for node in graph.node if node.op_type == "Conv"}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, single_thread):
    """Runs pruning at 0.3: steps=2 and round_to=4 on a tiny target, logged to MLflow (it trains
    the baseline); the defaults; int8 after a per-layer analysis; the defaults again, logged
    (the baseline from the cache)."""
    out = {}
    cache = tmp_path_factory.mktemp("cache")
    store = f"logger.tracking_uri=sqlite:///{cache / 'mlflow.db'}"
    for name, extra in {
        "steps2_round4": ["prune.steps=2", "prune.round_to=4", "target=tiny",
                          "target.flash_bytes=10000", "logger=mlflow", store],
        "default": [],
        "int8_layers": ["quant=int8", "analysis=layers", "analysis.ratios=[0.5]"],
        "cached": ["logger=mlflow", store],
    }.items():
        folder = tmp_path_factory.mktemp(name)
        cfg = compose([*TINY, "prune.ratio=0.3", "logger=none", f"cache_dir={cache}",
                       f"+output_dir={folder}", *extra])
        out[name] = (run(cfg), folder)
    out["store"] = cache / "mlflow.db"
    return out


def _history(jobs, name, metric):
    from tinyexp.tracking import client_for

    client = client_for(f"sqlite:///{jobs['store']}")
    run_id = jobs[name][0]["mlflow_run_id"]
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, metric),
                                              key=lambda m: m.step)]


def test_every_training_logs_its_curves_into_the_run(jobs):
    for name in ("steps2_round4", "cached"):
        epochs = int(jobs[name][0]["metrics"]["baseline/epochs"])
        for curve in ("train_loss", "val_loss"):
            points = _history(jobs, name, f"curves/baseline/{curve}")
            # one point per epoch, step = epoch; a cache hit replays the cached training's curve
            assert [s for s, _ in points] == list(range(1, epochs + 1)), points
    assert _history(jobs, "cached", "curves/baseline/val_loss") == \
        _history(jobs, "steps2_round4", "curves/baseline/val_loss")
    for step in (1, 2):  # prune.steps=2: a curve per fine-tune, one epoch each (TINY)
        points = _history(jobs, "steps2_round4", f"curves/prune_step{step}/val_loss")
        assert [s for s, _ in points] == [1]
    assert not _history(jobs, "steps2_round4", "curves/prune_step3/val_loss")


def test_round_to_and_steps_reach_the_pruned_model(jobs):
    (default, plain), (stepped, rounded) = jobs["default"], jobs["steps2_round4"]
    before = _conv_widths(plain / "baseline.onnx")
    widths = {"default": _conv_widths(plain / "pruned.onnx"),
              "round4": _conv_widths(rounded / "pruned.onnx")}
    assert all(w % 4 == 0 for w in widths["round4"].values()), widths
    assert any(w % 4 for w in widths["default"].values()), widths  # the premise: 0.3 of 32, 16
    assert widths["round4"] != widths["default"]
    shrunk = {k for k in before if widths["default"][k] < before[k]}
    assert shrunk and all(widths["round4"][k] < before[k] for k in shrunk)
    m1, m2 = default["metrics"], stepped["metrics"]
    assert m1["pruned/steps"] == 3 and m2["pruned/steps"] == 2  # the default is 3 steps
    # One fine-tuning epoch after each step (prune.finetune_epochs=1 in TINY).
    assert m1["pruned/finetune_epochs"] == 3 and m2["pruned/finetune_epochs"] == 2
    assert m1["pruned/groups_pruned"] > m2["pruned/groups_pruned"]


def test_the_run_says_whether_each_stage_fits_the_target(jobs):
    default, plain = jobs["default"]
    small, folder = jobs["steps2_round4"]
    text = (plain / "summary.txt").read_text()
    assert "target cortex_m4" in text and "does not fit" not in text
    assert "baseline fits" in text and "pruned fits" in text
    summary = (folder / "summary.txt").read_text()
    # 10,000 B of flash: the float CNN (~55 kB as a flatbuffer) does not fit, and the run says so.
    assert small["metrics"]["baseline/flash_bytes"] > 10_000
    assert "baseline does not fit" in summary


@pytest.mark.parametrize(("flash", "ram", "fits"), [
    (100, 100, True),     # under both budgets
    (1000, 1000, True),   # exactly at the budget still fits
    (1001, 100, False),   # over the flash budget
    (100, 1001, False),   # over the RAM budget
])
def test_fits_target_compares_both_budgets(flash, ram, fits):
    target = OmegaConf.create({"flash_bytes": 1000, "ram_bytes": 1000})
    metrics = {"pruned/flash_bytes": flash, "pruned/ram_bytes": ram}
    assert fits_target(metrics, "pruned", target) is fits


def test_every_stage_is_measured_and_compared_with_the_baseline(jobs):
    result, folder = jobs["int8_layers"]
    metrics = result["metrics"]
    assert result["final_stage"] == "quantized"
    assert result["objective"] == metrics["quantized/f1"]
    for stage in ("baseline", "pruned", "quantized"):
        file = folder / f"{stage}.onnx"
        assert metrics[f"{stage}/size_bytes"] == file.stat().st_size
        # flash: the estimated TFLite flatbuffer the file converts to (not the ONNX file)
        assert 0.5 < metrics[f"{stage}/flash_bytes"] / file.stat().st_size < 2
        for name in ("mse", "f1", "roc_auc", "params", "weight_bytes", "macs", "ram_bytes",
                     "latency_ms", "latency_p90_ms"):
            assert f"{stage}/{name}" in metrics, f"{stage}/{name}"
    # The quantized metrics come from running the int8 file, not the float network.
    assert metrics["quantized/mse"] != metrics["pruned/mse"]
    assert metrics["quantized/weight_bytes"] < 0.75 * metrics["pruned/weight_bytes"]
    assert metrics["quantized/float_compute_ops"] == 2  # the transposed convolutions
    for stage in ("pruned", "quantized"):
        for name, key in (("params", "param_reduction_pct"), ("macs", "macs_reduction_pct"),
                          ("size_bytes", "size_reduction_pct"),
                          ("latency_ms", "latency_reduction_pct")):
            base, value = metrics[f"baseline/{name}"], metrics[f"{stage}/{name}"]
            assert metrics[f"{stage}/{key}"] == pytest.approx(100 * (base - value) / base)
        for name in ("mse", "f1", "far", "mar", "roc_auc"):
            assert metrics[f"{stage}/{name}_delta"] == pytest.approx(
                metrics[f"{stage}/{name}"] - metrics[f"baseline/{name}"])
    assert metrics["pruned/param_reduction_pct"] > 0  # smaller is a positive saving
    assert json.loads((folder / "metrics.json").read_text()) == pytest.approx(metrics)


def test_the_layer_analysis_is_logged_per_group(jobs):
    result, folder = jobs["int8_layers"]
    layers = {k: v for k, v in result["metrics"].items() if k.startswith("layers/")}
    # The CNN's four prunable groups at ratio 0.5, ranked by MSE (anomaly data).
    assert len(layers) == 8 and all(k.split("/")[2] == "r50" for k in layers)
    assert {k.rsplit("/", 1)[-1] for k in layers} == {"mse", "mse_delta"}
    for key, value in layers.items():
        if key.endswith("/mse"):
            assert layers[f"{key}_delta"] == pytest.approx(
                value - result["metrics"]["baseline/mse"], rel=1e-6)
    assert (folder / "layer_sensitivity.csv").read_text().count("\n") == 1 + 4 + 1
    assert (folder / "layer_sensitivity.png").stat().st_size > 0



def test_repeats_run_each_seed_and_log_the_mean_with_its_interval(tmp_path):
    """repeats=3: three seeds in one job (one MLflow run), the metrics their mean, with the
    t-interval computed by hand here; the data set stays that of dataset.seed."""
    cfg = compose([*TINY, "repeats=3", "seed=4", "quant=int8", "logger=none",
                   "objective=roc_auc", f"cache_dir={tmp_path / 'cache'}",
                   f"+output_dir={tmp_path / 'job'}"])
    result = run(cfg)
    metrics = result["metrics"]
    assert metrics["repeats"] == 3
    values = [metrics[f"seeds/{s}/quantized/roc_auc"] for s in (4, 5, 6)]
    assert len(set(values)) > 1  # the seeds trained different networks
    mean = sum(values) / 3
    sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert metrics["quantized/roc_auc"] == pytest.approx(mean)
    assert metrics["quantized/roc_auc_sd"] == pytest.approx(sd)
    assert metrics["quantized/roc_auc_ci95"] == pytest.approx(4.302652729911275 * sd / 3 ** 0.5)
    assert result["objective"] == pytest.approx(mean)  # objective=roc_auc, over the seeds
    for seed in (4, 5, 6):
        assert (tmp_path / "job" / f"seed{seed}" / "quantized.onnx").is_file()
    summary = (tmp_path / "job" / "summary.txt").read_text()
    assert "mean ± 95% CI over 3 seeds" in summary and " ± " in summary
    # The data set is dataset.seed's: every seed trains and evaluates on the same series.
    from tinyexp.pipeline import build_datamodule, with_seed

    first, last = build_datamodule(cfg), build_datamodule(with_seed(cfg, 6))
    assert (first.segments[0].test == last.segments[0].test).all()
    assert (first.train_windows == last.train_windows).all()
