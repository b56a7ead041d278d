"""One experiment, top to bottom: the only place that knows the order of stages.

    data -> network -> baseline (cached or trained)   -> measure
                    [-> per-layer sensitivity (analysis=layers): each group pruned alone]
                    -> prune + fine-tune              -> measure
                    -> quantize (ONNX Runtime PTQ, or Brevitas QAT) -> measure in the runtime
    -> log to MLflow, write metrics.json, print the table, return the objective

Each stage takes objects and returns ``(network, metrics)``; this module merges the metrics
under the stage's prefix (``baseline/mse``, ``pruned/params``, ...).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tinyexp import cache, search, tracking
from tinyexp.compress.prune import prune_l1
from tinyexp.compress.quantize import PTQSpec, float_compute_ops, quantize_onnx, weight_bytes
from tinyexp.config import ALL_TASK_METRICS, constructor_kwargs, describe, validate
from tinyexp.lit import train
from tinyexp.measure.cost import artifact_cost, compact_onnx, count_params, export_onnx, ort_session
from tinyexp.measure.metrics import anomaly_metrics, classification_metrics
from tinyexp.summary import stage_table

log = logging.getLogger(__name__)

# The task metric a stage is judged by (the objective returned to a sweeper).
PRIMARY_METRIC = {"anomaly": "f1", "classification": "accuracy"}
# The metric the per-layer analysis ranks groups by, unless analysis.metric says otherwise:
# without fine-tuning F1 falls to 0 for every damaged autoencoder; the error still ranks them.
SENSITIVITY_METRIC = {"anomaly": "mse", "classification": "accuracy"}


# ----------------------------------------------------------------------------- building


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    datamodule = instantiate(constructor_kwargs(cfg.dataset))
    datamodule.setup("fit")
    return datamodule


def build_net(cfg: DictConfig, datamodule: pl.LightningDataModule) -> nn.Module:
    """The architecture of ``cfg.arch``, sized for the data."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if datamodule.task == "anomaly":
        shape = {"in_channels": datamodule.num_channels, "window": datamodule.window}
    else:
        shape = {"in_channels": datamodule.in_channels, "num_classes": datamodule.num_classes,
                 "image_size": datamodule.image_size}
    return instantiate(constructor_kwargs(cfg.arch), **shape)


def _torch_predict(net: nn.Module):
    net.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return predict


def _ort_predict(path: Path):
    """Predict with the artifact itself in ONNX Runtime (batch 1: its shapes are static)."""
    session = ort_session(path)
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

    return predict


# ----------------------------------------------------------------------------- stages


def evaluate(predict: Any, datamodule: pl.LightningDataModule, cfg: DictConfig) -> dict:
    """Task metrics of a predictor (numpy in, numpy out) on the test data."""
    if datamodule.task == "anomaly":
        return anomaly_metrics(predict, datamodule.segments, datamodule.window,
                               quantile=cfg.dataset.threshold_quantile,
                               threshold_scale=cfg.dataset.threshold_scale)
    return classification_metrics(predict, *datamodule.test_arrays())


def measure(predict: Any, net: nn.Module, datamodule: pl.LightningDataModule, cfg: DictConfig,
            artifact: Path) -> dict[str, float]:
    """Task metrics of ``predict``, parameters of ``net``, and the cost of ``artifact``."""
    return {
        **evaluate(predict, datamodule, cfg),
        "params": count_params(net),
        "weight_bytes": weight_bytes(artifact),
        **artifact_cost(artifact, datamodule.example_input().numpy(),
                        cfg.measure.latency_warmup, cfg.measure.latency_runs),
    }


def measure_float(net: nn.Module, datamodule: pl.LightningDataModule, cfg: DictConfig,
                  artifact: Path) -> dict[str, float]:
    """Export a float network to ONNX and measure it (task metrics computed in PyTorch)."""
    export_onnx(net, datamodule.example_input(), artifact, cfg.measure.opset)
    return measure(_torch_predict(net), net, datamodule, cfg, artifact)


def baseline_stage(net: nn.Module, datamodule: pl.LightningDataModule,
                   cfg: DictConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Load the float baseline from the cache, or train it and cache it."""
    key = cache.baseline_key(cfg)
    info = cache.load(cfg.cache_dir, key, net)
    if info is not None:
        log.info("baseline: reusing cached weights %s", key)
        return net, {**info, "cache": "hit", "key": key}
    log.info("baseline: training %s", cfg.arch.name)
    info = train(net, datamodule, cfg)
    cache.store(cfg.cache_dir, key, net, info)
    return net, {**info, "cache": "miss", "key": key}


def prune_stage(net: nn.Module, datamodule: pl.LightningDataModule, cfg: DictConfig,
                callbacks: list[pl.Callback]) -> tuple[nn.Module, dict[str, float]]:
    """Structured L1 pruning of a copy of ``net``, fine-tuned after each step."""
    epochs = cfg.prune.finetune_epochs
    trained = []  # epochs each fine-tuning ran (early stopping may end one sooner)

    def finetune(pruned: nn.Module) -> None:
        if epochs > 0:
            info = train(pruned, datamodule, cfg, max_epochs=epochs, extra_callbacks=callbacks)
            trained.append(info["epochs"])

    pruned, report = prune_l1(copy.deepcopy(net), datamodule.example_input(),
                              ratio=cfg.prune.ratio, steps=cfg.prune.steps, finetune=finetune,
                              round_to=cfg.prune.round_to)
    return pruned, {"ratio_asked": report.ratio, "steps": report.steps,
                    "groups_pruned": report.groups_pruned, "finetune_epochs": sum(trained)}


def sensitivity_stage(net: nn.Module, datamodule: pl.LightningDataModule,
                      cfg: DictConfig) -> tuple[nn.Module, list[dict[str, Any]], str]:
    """Per-layer sensitivity: each prunable group pruned alone at each ratio, then evaluated.

    Returns the network unchanged, one row per group and ratio, and the metric ranking them.
    """
    from tinyexp.compress.sensitivity import layer_sensitivity

    epochs = cfg.analysis.finetune_epochs

    def finetune(pruned: nn.Module) -> None:
        train(pruned, datamodule, cfg, max_epochs=epochs)

    rows = layer_sensitivity(
        net, datamodule.example_input(),
        evaluate=lambda pruned: evaluate(_torch_predict(pruned), datamodule, cfg),
        ratios=list(cfg.analysis.ratios), finetune=finetune if epochs > 0 else None)
    return net, rows, cfg.analysis.metric or SENSITIVITY_METRIC[datamodule.task]


def quantize_stage(net: nn.Module, datamodule: pl.LightningDataModule, cfg: DictConfig,
                   artifact: Path, callbacks: list[pl.Callback]) -> tuple[nn.Module, dict]:
    """Quantize the final float network into ``artifact``; report what stayed in float."""
    quant = cfg.quant
    example = datamodule.example_input()
    report: dict[str, Any] = {}
    if quant.name == "qat":
        from tinyexp.compress.qat import calibrate, export_qcdq, to_qat

        net = to_qat(net, quant.weight_bits, quant.act_bits)
        # Set activation scales from data first: fresh quantizers clip to [-1, 1].
        calibrate(net, torch.from_numpy(datamodule.calibration_windows(256)))
        info = train(net, datamodule, cfg, max_epochs=quant.epochs, extra_callbacks=callbacks)
        report["epochs"] = info["epochs"]
        export_qcdq(net, example, artifact)
    else:
        spec = PTQSpec(mode=quant.name, **{k: quant[k] for k in (
            "calibration_samples", "per_channel", "calibrate_method", "format") if k in quant})
        calibration = (datamodule.calibration_windows(quant.calibration_samples)
                       if "calibration_samples" in quant else None)
        source = export_onnx(net, example, artifact.with_suffix(".float.onnx"),
                             cfg.measure.opset, compact=False)
        try:
            quantize_onnx(source, artifact, spec, calibration)
        finally:
            source.unlink(missing_ok=True)
    compact_onnx(artifact)
    left = float_compute_ops(artifact)
    if left:
        log.warning("quant=%s: ONNX Runtime runs %s in float32 in this model (recorded on the "
                    "run as tinyexp.quant_float_ops)", quant.name,
                    ", ".join(f"{n} x{c}" for n, c in sorted(left.items())))
    return net, {**report, "float_ops": left}


# ----------------------------------------------------------------------------- the run


_REDUCTIONS = {"params": "param_reduction_pct", "macs": "macs_reduction_pct",
               "size_bytes": "size_reduction_pct", "latency_ms": "latency_reduction_pct"}


def _reductions(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """Percent saved against the float baseline (positive = smaller or faster), and the
    change of each task metric (``<metric>_delta`` = stage minus baseline)."""
    out = {}
    for name, key in _REDUCTIONS.items():
        base, value = metrics.get(f"baseline/{name}"), metrics.get(f"{stage}/{name}")
        if base and value is not None:
            out[f"{stage}/{key}"] = 100.0 * (base - value) / base
    for name in ALL_TASK_METRICS:
        base, value = metrics.get(f"baseline/{name}"), metrics.get(f"{stage}/{name}")
        if base is not None and value is not None:
            out[f"{stage}/{name}_delta"] = value - base
    return out


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically; NaN becomes null so any JSON reader takes the file."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in data.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True))
    os.replace(tmp, path)


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The option of each group, as searchable run tags (``tinyexp.arch: cnn``)."""
    return {f"tinyexp.{g}": cfg[g].name for g in ("dataset", "arch", "prune", "quant", "target")}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment job.

    Returns:
        ``objective`` (the final stage's task metric), ``final_stage``, the flat ``metrics``
        and the ``mlflow_run_id`` (None with ``logger=none``): what a sweeper needs.
    """
    validate(cfg)
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    out_dir = Path(hydra.runtime.output_dir if hydra else cfg.get("output_dir", "outputs/job"))
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_dir = Path(hydra.sweep.dir) if hydra and hydra.mode == RunMode.MULTIRUN else None
    name = describe(cfg)
    tags = run_tags(cfg)
    if hydra is not None:
        tags["tinyexp.overrides"] = " ".join(hydra.overrides.task) or "(defaults)"

    trial = cfg.get("optuna")
    if trial:
        tags.update({"tinyexp.study": trial.study_name, "tinyexp.trial": str(trial.trial_number)})

    with tracking.job_run(cfg, name, tags, sweep_dir) as tracker:
        pruning = search.pruning_callback(cfg)
        callbacks = [pruning] if pruning else []
        torch.manual_seed(cfg.seed)
        datamodule = build_datamodule(cfg)
        net = build_net(cfg, datamodule)
        net, info = baseline_stage(net, datamodule, cfg)
        tracker.set_tags({"tinyexp.baseline_cache": info["cache"],
                          "tinyexp.baseline_key": info["key"]})
        metrics = {f"baseline/{k}": v for k, v in measure_float(
            net, datamodule, cfg, out_dir / "baseline.onnx").items()}
        metrics["baseline/epochs"] = info["epochs"]
        primary = PRIMARY_METRIC[datamodule.task]
        if cfg.analysis.name == "layers":
            net, rows, ranked_by = sensitivity_stage(net, datamodule, cfg)
            metrics.update(_layer_metrics(rows, ranked_by))
            layer_files = write_layer_report(rows, ranked_by, out_dir)
        final = "baseline"
        if cfg.prune.name != "none":
            net, report = prune_stage(net, datamodule, cfg, callbacks)
            metrics.update({f"pruned/{k}": v for k, v in measure_float(
                net, datamodule, cfg, out_dir / "pruned.onnx").items()})
            metrics.update({f"pruned/{k}": v for k, v in report.items()})
            final = "pruned"
        if cfg.quant.name != "none":
            artifact = out_dir / "quantized.onnx"
            qnet, report = quantize_stage(net, datamodule, cfg, artifact, callbacks)
            metrics.update({f"quantized/{k}": v for k, v in measure(
                _ort_predict(artifact), qnet, datamodule, cfg, artifact).items()})
            metrics["quantized/float_compute_ops"] = sum(report["float_ops"].values())
            if "epochs" in report:  # QAT: the fine-tuning epochs it ran
                metrics["quantized/epochs"] = report["epochs"]
            tracker.set_tags({"tinyexp.quant_float_ops": ", ".join(
                f"{n} x{c}" for n, c in sorted(report["float_ops"].items())) or "none"})
            final = "quantized"
        for stage in ("pruned", "quantized"):
            if f"{stage}/params" in metrics:
                metrics.update(_reductions(metrics, stage))

        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        write_json(out_dir / "metrics.json", metrics)
        tracker.log_metrics(metrics)
        for artifact in ("config.yaml", "metrics.json", "baseline.onnx", "pruned.onnx",
                         "quantized.onnx"):
            if (out_dir / artifact).exists():
                tracker.log_artifact(out_dir / artifact)
        if cfg.analysis.name == "layers":
            for path in layer_files:
                tracker.log_artifact(path, "layer_sensitivity")

    cached = " (baseline from cache)" if info["cache"] == "hit" else ""
    table = stage_table(metrics, f"{name}{cached}  ->  {out_dir}")
    fits = [f"{stage} {'fits' if fits_target(metrics, stage, cfg.target) else 'does not fit'}"
            for stage in ("baseline", "pruned", "quantized") if f"{stage}/flash_bytes" in metrics]
    table += f"\ntarget {cfg.target.name} ({cfg.target.flash_bytes:,} B flash, " \
             f"{cfg.target.ram_bytes:,} B RAM): " + ", ".join(fits)
    (out_dir / "summary.txt").write_text(table + "\n")
    print(table, flush=True)
    return {
        "objective": float(metrics[f"{final}/{primary}"]),
        "final_stage": final,
        "metrics": metrics,
        "mlflow_run_id": tracker.run_id,
    }


def _layer_metrics(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """``layers/<group>/r50/f1`` and ``.../f1_delta``: the analysis as run metrics."""
    out = {}
    for row in rows:
        if row["group"] != "(none)" and row["kept"] < row["width"]:  # else nothing was cut
            key = f"layers/{row['group']}/r{round(100 * row['ratio']):02d}"
            out[f"{key}/{metric}"] = row[metric]
            out[f"{key}/{metric}_delta"] = row[f"{metric}_delta"]
    return out


def write_layer_report(rows: list[dict[str, Any]], metric: str, out_dir: Path) -> list[Path]:
    """Write the analysis as ``layer_sensitivity.csv``/``.png`` and print its table."""
    from tinyexp.report import layer_table, plot_layer_sensitivity, write_rows_csv

    csv_path = write_rows_csv(rows, out_dir / "layer_sensitivity.csv")
    png_path = plot_layer_sensitivity(rows, metric, out_dir / "layer_sensitivity.png")
    print(layer_table(rows, metric), flush=True)
    return [csv_path, png_path]


def fits_target(metrics: dict[str, float], stage: str, target: DictConfig) -> bool:
    """Whether a stage's deployable file and peak activations fit the target's memory."""
    return (metrics[f"{stage}/flash_bytes"] <= target.flash_bytes
            and metrics[f"{stage}/ram_bytes"] <= target.ram_bytes)
