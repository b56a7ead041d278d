"""The bookkeeping of one job around its stages: where its files go, how its run is named and
tagged, how stage metrics are keyed, whether a stage fits the target, what is saved and logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tinyexp.config import describe, option_name
from tinyexp.files import atomic_write, write_json
from tinyexp.stages.base import MODEL_STAGES
from tinyexp.summary import fmt_number

# Files of the job folder attached to its MLflow run, when the run wrote them.
OUTPUT_FILES = ("config.yaml", "metrics.json", "baseline.onnx", "pruned.onnx", "quantized.onnx")


@dataclass
class Job:
    """Attributes:
        out_dir: the job's output folder (Hydra's, or ``output_dir`` outside Hydra).
        sweep_dir: the multirun folder when the job is part of one, else None.
        name: the run name, e.g. ``sensors-cnn-l1@0.5-int8``.
        tags: searchable run tags (``tinyexp.arch: cnn``, ...).
    """

    out_dir: Path
    sweep_dir: Path | None
    name: str
    tags: dict[str, str]


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The option of each group, as searchable run tags (``tinyexp.arch: cnn``)."""
    return {f"tinyexp.{g}": option_name(cfg, g)
            for g in ("dataset", "arch", "prune", "quant", "distill", "deploy", "target")}


def job_folders(cfg: DictConfig) -> Job:
    """The job's folders, name and tags, from Hydra's runtime (or ``output_dir`` without it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    out_dir = Path(hydra.runtime.output_dir if hydra else cfg.get("output_dir", "outputs/job"))
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_dir = Path(hydra.sweep.dir) if hydra and hydra.mode == RunMode.MULTIRUN else None
    tags = run_tags(cfg)
    if hydra is not None:
        tags["tinyexp.overrides"] = " ".join(hydra.overrides.task) or "(defaults)"
    trial = cfg.get("optuna")
    if trial:
        tags.update({"tinyexp.study": trial.study_name, "tinyexp.trial": str(trial.trial_number)})
    return Job(out_dir, sweep_dir, describe(cfg), tags)


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"mse": 1}`` -> ``{"pruned/mse": 1}``."""
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def estimate_check(metrics: dict[str, float]) -> dict[str, float]:
    """How the ONNX-based estimates of the model that was deployed compare with TFLite Micro:
    ``deployed/ram_estimate_ratio`` (its ``ram_bytes`` / TFLM's arena) and
    ``deployed/flash_estimate_ratio`` (its ``flash_bytes`` / the ``.tflite`` bytes)."""
    source = [s for s in MODEL_STAGES[:-1] if f"{s}/ram_bytes" in metrics][-1]
    return {"deployed/ram_estimate_ratio":
            metrics[f"{source}/ram_bytes"] / metrics["deployed/arena_bytes"],
            "deployed/flash_estimate_ratio":
            metrics[f"{source}/flash_bytes"] / metrics["deployed/flash_bytes"]}


def fits_target(metrics: dict[str, float], stage: str, target: Any) -> bool:
    """Whether a stage's deployable file and peak activations fit the target's memory."""
    return (metrics[f"{stage}/flash_bytes"] <= target.flash_bytes
            and metrics[f"{stage}/ram_bytes"] <= target.ram_bytes)


def target_verdict(metrics: dict[str, float], target: Any) -> str:
    """One line: the target's budget and which measured stages fit it."""
    fits = [f"{stage} {'fits' if fits_target(metrics, stage, target) else 'does not fit'}"
            for stage in MODEL_STAGES if f"{stage}/flash_bytes" in metrics]
    return (f"target {target.name} ({fmt_number(target.flash_bytes)} B flash, "
            f"{fmt_number(target.ram_bytes)} B RAM): " + ", ".join(fits))


def save_outputs(out_dir: Path, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The resolved config and the metrics, in the job folder."""
    atomic_write(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(out_dir / "metrics.json", metrics)


def log_outputs(tracker: Any, out_dir: Path, metrics: dict[str, Any],
                artifacts: list[tuple[Path, str | None]]) -> None:
    """Metrics, the job folder's output files and the stages' artifacts, to the run."""
    tracker.log_metrics(metrics)
    for name in OUTPUT_FILES:
        if (out_dir / name).exists():
            tracker.log_artifact(out_dir / name)
    for path, folder in artifacts:
        tracker.log_artifact(path, folder)
