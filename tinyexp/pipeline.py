"""One experiment, top to bottom: the only place that knows the order of stages.

    data -> network -> baseline (cached or trained)            -> measure
                    -> analysis (analysis=layers: each group pruned alone; network unchanged)
                    -> prune + fine-tune                         -> measure
                    -> quantize (ONNX Runtime PTQ, or Brevitas QAT) -> measure in the runtime
    -> log to MLflow, write metrics.json, print the table, return the objective

With ``repeats=N`` the stages run once per seed (``seed`` .. ``seed+N-1``) in the same MLflow run
and the metrics are their mean, with ``_sd``, ``_ci95`` and the per-seed values.

Each stage is the spec object its config group names (``_target_``): ``stage.apply(net, ctx)``
returns ``(network, metrics)`` and the run keys the metrics by the stage's prefix
(``pruned/mse``, ``quantized/params``, ...). A null group (``quant=none``) is skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna5_sweeper import JobResult
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tinyexp import cache, job, search, tracking
from tinyexp.config import (
    ALL_TASK_METRICS,
    PRIMARY_METRIC,
    STAGE_GROUPS,
    constructor_kwargs,
    validate,
)
from tinyexp.files import atomic_write
from tinyexp.lit import dropout_rate, train
from tinyexp.measure.changes import stage_changes
from tinyexp.measure.network import Measurer
from tinyexp.measure.stats import aggregate
from tinyexp.stages.base import MODEL_STAGES, Context
from tinyexp.summary import stage_table

log = logging.getLogger(__name__)

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


def build_context(cfg: DictConfig, datamodule: pl.LightningDataModule, out_dir: Path,
                  tracker: Any, curve_prefix: str = "", with_search: bool = True) -> Context:
    """What the stages share: data, the run's fine-tuning (with curves, the search's pruning
    callback and the teacher of ``distill``), the measuring, the export settings, the folder."""
    pruning = search.pruning_callback(cfg) if with_search else None
    measurer = Measurer(datamodule, cfg.dataset, cfg.measure)
    finetune = cfg.get("finetune") or {}

    def fit(net: nn.Module, stage: str, max_epochs: int, searched: bool = True,
            lr: float | None = None) -> dict:
        lr = lr or finetune.get("lr")
        cap = finetune.get("max_epochs")  # a large dataset's schedule (conf/schedule) caps it
        max_epochs = min(max_epochs, cap) if cap else max_epochs
        kd = ctx.distill
        with dropout_rate(net, finetune.get("dropout")):
            return train(net, datamodule, cfg, max_epochs=max_epochs,
                         extra_callbacks=[pruning] if pruning and searched else [],
                         on_epoch=tracker.curve_logger(curve_prefix + stage),
                         optim={"lr": lr} if lr else None,
                         scheduler=finetune.get("scheduler", "none"), teacher=ctx.teacher,
                         distill=kd.settings() if kd else None)

    ctx = Context(
        datamodule=datamodule, example=datamodule.example_input(),
        calibration=datamodule.calibration_windows, fit=fit, evaluate=measurer.evaluate,
        measure_float=lambda net, name: measurer.float_network(net, out_dir / f"{name}.onnx"),
        measure_artifact=measurer.artifact, task_metrics=measurer.task_metrics,
        timing={"warmup": cfg.measure.latency_warmup, "runs": cfg.measure.latency_runs,
                "lock": cfg.measure.latency_lock},
        sensitivity_metric=SENSITIVITY_METRIC[datamodule.task],
        opset=cfg.measure.opset, out_dir=out_dir)
    return ctx


def baseline(net: nn.Module, ctx: Context, cfg: DictConfig, tracker: Any,
             curve_prefix: str = "") -> tuple[nn.Module, dict[str, Any]]:
    """The float baseline: from the cache, or trained and cached; then measured.

    A job that finds another training the same baseline waits for it and loads its weights
    (:func:`tinyexp.cache.load_or_train`); with ``trainer.resume=auto`` a killed training's
    rerun resumes after its last epoch. Measuring happens after, not holding the cache's lock.
    """
    key = cache.baseline_key(cfg)
    curve = curve_prefix + "baseline"

    def fit(checkpoints: Path | None) -> dict[str, Any]:
        log.info("baseline: training %s", cfg.arch.name)
        return train(net, ctx.datamodule, cfg, on_epoch=tracker.curve_logger(curve),
                     checkpoints=checkpoints)

    info, hit = cache.load_or_train(cfg.cache_dir, key, net, fit,
                                    resume=cfg.trainer.get("resume", "auto") == "auto")
    if hit:
        log.info("baseline: reusing cached weights %s", key)
        tracker.log_curve(curve, info.get("curve") or {})  # replay the cached training
    ctx.tags.update({"tinyexp.baseline_cache": "hit" if hit else "miss",
                     "tinyexp.baseline_key": key})
    return net, {**ctx.measure_float(net, "baseline"), "epochs": info["epochs"]}


def run_stages(cfg: DictConfig, specs: dict[str, Any], out_dir: Path, tracker: Any,
               curve_prefix: str = "", with_search: bool = True) -> tuple[dict, str, Context]:
    """Baseline, then every configured stage in order, for ``cfg.seed``.

    Returns the stage-prefixed metrics (with the changes against the baseline), the last stage
    that produced a model, and the context (its tags and artifacts).
    """
    torch.manual_seed(cfg.seed)
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule)
    ctx = build_context(cfg, datamodule, out_dir, tracker, curve_prefix, with_search)
    net, report = baseline(net, ctx, cfg, tracker, curve_prefix)
    tracker.set_tags(ctx.tags)
    metrics, final = job.prefixed("baseline", report), "baseline"
    for group in STAGE_GROUPS:
        stage = specs[group]
        if stage is not None:
            net, report = stage.apply(net, ctx)
            tracker.set_tags(ctx.tags)
            metrics.update(job.prefixed(stage.prefix, report))
            # A deploy job is judged on the deployed model: if it did not deploy, the job has
            # no final metrics (a sweep's trial fails with the reason) rather than other ones.
            final = stage.prefix if stage.yields_model else final
    if "deployed/arena_bytes" in metrics:
        metrics.update(job.estimate_check(metrics))
    for stage in MODEL_STAGES[1:]:
        if f"{stage}/params" in metrics:
            metrics.update(stage_changes(metrics, stage, ALL_TASK_METRICS))
    return metrics, final, ctx


def check_before_run(cfg: DictConfig, specs: dict[str, Any]) -> None:
    """The checks that need torch, before any run exists: the Trainer, optimizer and callbacks
    are built as the run builds them, and the pruning settings dry-run on an untrained copy of
    the network (settings that would prune nothing are bad input, not a result)."""
    from tinyexp.preflight import preflight

    preflight(cfg)
    checks = [spec.check_prunes for group in ("analysis", "prune")
              if (spec := specs[group]) is not None and hasattr(spec, "check_prunes")]
    if checks:
        datamodule = build_datamodule(cfg)
        net = build_net(cfg, datamodule)
        for check in checks:
            check(net, datamodule.example_input())


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """A copy of the job config with another ``seed`` (the data set keeps ``dataset.seed``)."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    copy.seed = seed
    return copy


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment job (over ``repeats`` seeds).

    Returns:
        ``objective`` (the final stage's ``objective`` metric, its mean over seeds),
        ``final_stage``, the flat ``metrics`` and the ``mlflow_run_id`` (None with
        ``logger=none``): what a sweeper needs.
    """
    specs = validate(cfg)
    check_before_run(cfg, specs)
    this = job.job_folders(cfg)
    repeats = cfg.get("repeats", 1)
    seeds = [cfg.seed + i for i in range(repeats)]
    with tracking.job_run(cfg, this.name, this.tags, this.sweep_dir) as tracker:
        if repeats == 1:
            metrics, final, ctx = run_stages(cfg, specs, this.out_dir, tracker)
            artifacts, hits = ctx.artifacts, [ctx.tags["tinyexp.baseline_cache"]]
        else:
            per_seed, artifacts, hits = {}, [], []
            for i, seed in enumerate(seeds):
                folder = this.out_dir / f"seed{seed}"
                per_seed[seed], final, ctx = run_stages(
                    with_seed(cfg, seed), specs, folder, tracker, curve_prefix=f"seed{seed}/",
                    with_search=i == 0)  # the search's pruner follows the first seed only
                artifacts += [*ctx.artifacts, *((p, f"seed{seed}")
                                                for p in sorted(folder.glob("*.onnx")))]
                hits.append(ctx.tags["tinyexp.baseline_cache"])
            metrics = aggregate(per_seed)
            tracker.set_tags({"tinyexp.baseline_cache": ",".join(hits),
                              "tinyexp.seeds": ",".join(map(str, seeds))})
        job.save_outputs(this.out_dir, cfg, metrics)
        job.log_outputs(tracker, this.out_dir, metrics, artifacts)

    cached = " (baseline from cache)" if set(hits) == {"hit"} else ""
    table = "\n".join([stage_table(metrics, f"{this.name}{cached}  ->  {this.out_dir}"),
                       job.target_verdict(metrics, cfg.target)])
    atomic_write(this.out_dir / "summary.txt", table + "\n")
    print(table, flush=True)
    objective = cfg.get("objective") or PRIMARY_METRIC[ctx.datamodule.task]
    # The sweeper's job contract (hydra-optuna5-sweeper's JobResult), as a plain dict.
    return JobResult(objective=_number(metrics.get(f"{final}/{objective}")), final_stage=final,
                     metrics=metrics, extra={"mlflow_run_id": tracker.run_id}).to_dict()


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
