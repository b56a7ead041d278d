"""One experiment, top to bottom: the only place that knows the order of stages.

    data -> network -> baseline (cached or trained)            -> measure
                    -> analysis (analysis=layers: each group pruned alone; network unchanged)
                    -> prune + fine-tune                         -> measure
                    -> quantize (ONNX Runtime PTQ, or Brevitas QAT) -> measure in the runtime
    -> log to MLflow, write metrics.json, print the table, return the objective

Each stage is the spec object its config group names (``_target_``): ``stage.apply(net, ctx)``
returns ``(network, metrics)`` and the run keys the metrics by the stage's prefix
(``pruned/mse``, ``quantized/params``, ...). A null group (``quant=none``) is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from tinyexp import cache, job, search, tracking
from tinyexp.config import ALL_TASK_METRICS, STAGE_GROUPS, constructor_kwargs, validate
from tinyexp.files import atomic_write
from tinyexp.lit import train
from tinyexp.measure.changes import stage_changes
from tinyexp.measure.network import Measurer
from tinyexp.stages.base import MODEL_STAGES, Context
from tinyexp.summary import stage_table

log = logging.getLogger(__name__)

# The task metric a stage is judged by (the objective returned to a sweeper).
PRIMARY_METRIC = {"anomaly": "f1", "classification": "accuracy"}
# The metric the per-layer analysis ranks groups by, unless analysis.metric says otherwise:
# without fine-tuning F1 falls to 0 for every damaged autoencoder; the error still ranks them.
SENSITIVITY_METRIC = {"anomaly": "mse", "classification": "accuracy"}


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


def build_context(cfg: DictConfig, datamodule: pl.LightningDataModule, out_dir: Any,
                  tracker: Any) -> Context:
    """What the stages share: data, the run's training (with curves and the search's pruning
    callback), the measuring, the export settings and the job folder."""
    pruning = search.pruning_callback(cfg)
    measurer = Measurer(datamodule, cfg.dataset, cfg.measure)

    def fit(net: nn.Module, stage: str, max_epochs: int, searched: bool = True) -> dict:
        return train(net, datamodule, cfg, max_epochs=max_epochs,
                     extra_callbacks=[pruning] if pruning and searched else [],
                     on_epoch=tracker.curve_logger(stage))

    return Context(
        datamodule=datamodule, example=datamodule.example_input(),
        calibration=datamodule.calibration_windows, fit=fit, evaluate=measurer.evaluate,
        measure_float=lambda net, name: measurer.float_network(net, out_dir / f"{name}.onnx"),
        measure_artifact=measurer.artifact,
        sensitivity_metric=SENSITIVITY_METRIC[datamodule.task],
        opset=cfg.measure.opset, out_dir=out_dir)


def baseline(net: nn.Module, ctx: Context, cfg: DictConfig,
             tracker: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The float baseline: from the cache, or trained and cached; then measured."""
    key = cache.baseline_key(cfg)
    info = cache.load(cfg.cache_dir, key, net)
    hit = info is not None
    if hit:
        log.info("baseline: reusing cached weights %s", key)
        tracker.log_curve("baseline", info.get("curve") or {})  # replay the cached training
    else:
        log.info("baseline: training %s", cfg.arch.name)
        info = train(net, ctx.datamodule, cfg, on_epoch=tracker.curve_logger("baseline"))
        cache.store(cfg.cache_dir, key, net, info)
    ctx.tags.update({"tinyexp.baseline_cache": "hit" if hit else "miss",
                     "tinyexp.baseline_key": key})
    return net, {**ctx.measure_float(net, "baseline"), "epochs": info["epochs"]}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment job.

    Returns:
        ``objective`` (the final stage's task metric), ``final_stage``, the flat ``metrics``
        and the ``mlflow_run_id`` (None with ``logger=none``): what a sweeper needs.
    """
    specs = validate(cfg)
    this = job.job_folders(cfg)
    with tracking.job_run(cfg, this.name, this.tags, this.sweep_dir) as tracker:
        torch.manual_seed(cfg.seed)
        datamodule = build_datamodule(cfg)
        net = build_net(cfg, datamodule)
        ctx = build_context(cfg, datamodule, this.out_dir, tracker)
        net, report = baseline(net, ctx, cfg, tracker)
        tracker.set_tags(ctx.tags)
        metrics, final = job.prefixed("baseline", report), "baseline"
        for group in STAGE_GROUPS:
            stage = specs[group]
            if stage is not None:
                net, report = stage.apply(net, ctx)
                tracker.set_tags(ctx.tags)
                metrics.update(job.prefixed(stage.prefix, report))
                final = stage.prefix if stage.yields_model else final
        for stage in MODEL_STAGES[1:]:
            if f"{stage}/params" in metrics:
                metrics.update(stage_changes(metrics, stage, ALL_TASK_METRICS))
        job.save_outputs(this.out_dir, cfg, metrics)
        job.log_outputs(tracker, this.out_dir, metrics, ctx.artifacts)

    cached = " (baseline from cache)" if ctx.tags["tinyexp.baseline_cache"] == "hit" else ""
    table = "\n".join([stage_table(metrics, f"{this.name}{cached}  ->  {this.out_dir}"),
                       job.target_verdict(metrics, cfg.target)])
    atomic_write(this.out_dir / "summary.txt", table + "\n")
    print(table, flush=True)
    return {
        "objective": float(metrics[f"{final}/{PRIMARY_METRIC[datamodule.task]}"]),
        "final_stage": final,
        "metrics": metrics,
        "mlflow_run_id": tracker.run_id,
    }
