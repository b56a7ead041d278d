"""What every stage shares: the base spec class and the context a stage runs in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# The stages that measure a deployable network, in run order (an analysis measures none).
MODEL_STAGES = ("baseline", "pruned", "quantized", "deployed")


@dataclass
class Context:
    """Everything a stage may use, built once per run by the pipeline.

    Attributes:
        datamodule: the run's LightningDataModule (its ``task`` says anomaly or classification).
        example: one input batch (batch 1) the network accepts: tracing, export, timing.
        calibration: ``calibration(n)`` -> up to ``n`` training inputs as a float32 array.
        fit: ``fit(net, stage, max_epochs, searched=True, lr=None)`` fine-tunes ``net`` in place
            with the run's Trainer and optimizer under the ``finetune`` settings (learning rate,
            schedule; ``lr`` overrides the rate), distilling from ``teacher`` when set, logs its
            curves as ``curves/<stage>/...`` and returns the training info (``epochs``, ...);
            ``searched`` attaches the Optuna search's pruning callback (it reports the
            fine-tune's progress to the trial).
        evaluate: ``evaluate(net)`` -> the task metrics of a float network on the test data.
        measure_float: ``measure_float(net, name)`` exports ``net`` to ``<out_dir>/<name>.onnx``
            and measures it (task metrics, params, MACs, size, latency, flash, RAM).
        measure_artifact: ``measure_artifact(net, path)`` measures an ONNX file in ONNX
            Runtime (task metrics of the file itself), with ``net``'s parameter count.
        task_metrics: ``task_metrics(predict)`` -> the task metrics of any predictor (float32
            array in, outputs out) on the test data: a runtime other than ONNX Runtime's.
        timing: ``{"warmup": n, "runs": n, "lock": path}`` of every latency measurement
            (``measure``).
        sensitivity_metric: the metric the per-layer analysis ranks by unless told otherwise.
        opset: the ONNX opset of every export.
        out_dir: the job's output folder.
        artifacts: files to attach to the run, as ``(path, folder in the run or None)``.
        tags: run tags a stage sets (``tinyexp.quant_float_ops``, ...).
        teacher: the network every later fine-tune distills from (set by ``distill=kd``).
        distill: the distillation spec (``temperature``, ``weight``) that set ``teacher``.
        quant: the name of the quantization stage that ran (``int8``, ``qat``, ...), or None.
    """

    datamodule: Any
    example: Any
    calibration: Callable[[int], Any]
    fit: Callable[..., dict[str, Any]]
    evaluate: Callable[[Any], dict[str, float]]
    measure_float: Callable[[Any, str], dict[str, float]]
    measure_artifact: Callable[[Any, Path], dict[str, float]]
    task_metrics: Callable[[Any], dict[str, float]]
    timing: dict[str, Any]
    sensitivity_metric: str
    opset: int
    out_dir: Path
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    teacher: Any = None
    distill: Any = None
    quant: str | None = None


@dataclass
class Stage:
    """Base of every stage spec. Subclasses are dataclasses whose fields are the YAML keys.

    Class attributes:
        prefix: the metric prefix of the stage (``pruned``, ``quantized``, ``layers``).
        yields_model: whether the stage produces the model the run is judged by (an analysis
            reports on the network and hands it on unchanged).
    """

    prefix: ClassVar[str] = ""
    yields_model: ClassVar[bool] = True

    name: str = ""

    def label(self) -> str:
        """The stage in a run name (``l1@0.5``, ``qat-w4a8``)."""
        return self.name

    def check_ready(self) -> None:
        """Raise ``ConfigError`` if the stage cannot run on this machine (a missing extra):
        called by the config check, before anything trains."""

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        """Apply the stage to ``net``; return the resulting network and the stage's metrics."""
        raise NotImplementedError
