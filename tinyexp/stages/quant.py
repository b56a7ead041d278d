"""Quantization: post-training in ONNX Runtime (``dynamic``, ``int8``, ``int16x8``, ``fp16``)
and quantization-aware training with Brevitas (``qat`` and its ``w2a8``..``w8a8`` presets).

Every method writes ``quantized.onnx`` into the job folder and measures that file in ONNX
Runtime: the accuracy of the quantized model is the accuracy of the artifact itself.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tinyexp.schemas import _require
from tinyexp.stages.base import Context, Stage

log = logging.getLogger(__name__)

ARTIFACT = "quantized.onnx"
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qoperator", "qdq")
# QAT calibrates on at most this many inputs, evenly spread over training and validation data
# (all of them for sensors and digits): one batch, so a transformer's attention maps of a
# larger data set (SKAB: 5,456 windows) stay within a few hundred MB.
QAT_CALIBRATION_INPUTS = 2048


@dataclass
class _Quantize(Stage):
    prefix = "quantized"

    def quantize(self, net: Any, ctx: Context, artifact: Path) -> tuple[Any, dict[str, Any]]:
        """Write the quantized model to ``artifact``; return the network it came from."""
        raise NotImplementedError

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        from tinyexp.compress.quantize import float_compute_ops
        from tinyexp.measure.cost import compact_onnx

        artifact = ctx.out_dir / ARTIFACT
        ctx.quant = self.name
        qnet, report = self.quantize(net, ctx, artifact)
        compact_onnx(artifact)
        left = float_compute_ops(artifact)
        ops = ", ".join(f"{n} x{c}" for n, c in sorted(left.items()))
        if left:
            log.warning("quant=%s: ONNX Runtime runs %s in float32 in this model (recorded on "
                        "the run as tinyexp.quant_float_ops)", self.name, ops)
        ctx.tags["tinyexp.quant_float_ops"] = ops or "none"
        return qnet, {**ctx.measure_artifact(qnet, artifact), **report,
                      "float_compute_ops": sum(left.values())}


@dataclass
class _PostTraining(_Quantize):
    """ONNX Runtime post-training quantization of the float network's ONNX export."""

    def quantize(self, net: Any, ctx: Context, artifact: Path) -> tuple[Any, dict[str, Any]]:
        from tinyexp.compress.quantize import quantize_onnx
        from tinyexp.measure.cost import export_onnx

        source = export_onnx(net, ctx.example, artifact.with_suffix(".float.onnx"), ctx.opset,
                             compact=False)
        try:
            quantize_onnx(source, artifact, self.name, **self.options(ctx))
        finally:
            source.unlink(missing_ok=True)
        return net, {}

    def options(self, ctx: Context) -> dict[str, Any]:
        """The keyword arguments of ``quantize_onnx`` for this method."""
        return {}


@dataclass
class DynamicQuant(_PostTraining):
    """Dynamic range: int8 weights, activations quantized on the fly at run time.

    Attributes:
        per_channel: one weight scale per output channel (ONNX Runtime applies it to MatMul
            weights; its ConvInteger kernel is per-tensor, so convolutions ignore it).
    """

    name: str = "dynamic"
    per_channel: bool = False

    def options(self, ctx: Context) -> dict[str, Any]:
        return {"per_channel": self.per_channel}


@dataclass
class FP16Quant(_PostTraining):
    """Float16 weights and compute (inputs and outputs stay float32)."""

    name: str = "fp16"


@dataclass
class StaticQuant(_PostTraining):
    """Static quantization calibrated on training data: int8 weights, ``act``-bit activations.

    Attributes:
        calibration_samples: training inputs the activation ranges are calibrated on.
        per_channel: one weight scale per output channel.
        calibrate_method: how ranges are set from the calibration data: minmax, entropy,
            percentile.
        format: qoperator (integer operators: QLinearConv, QGemm, ... as a full-integer
            deployment runs them) or qdq (quantize/dequantize pairs around float operators).
    """

    formats: ClassVar[tuple[str, ...]] = FORMATS
    methods: ClassVar[tuple[str, ...]] = CALIBRATE_METHODS

    name: str = "int8"
    calibration_samples: int = 256
    per_channel: bool = True
    calibrate_method: str = "minmax"
    format: str = "qoperator"

    def __post_init__(self) -> None:
        _require(self.format in self.formats, "quant.format",
                 f"must be {' or '.join(self.formats)} for quant={self.name}, "
                 f"got {self.format!r}")
        _require(self.calibration_samples >= 1, "quant.calibration_samples",
                 f"must be an int >= 1, got {self.calibration_samples}")
        _require(self.calibrate_method in self.methods, "quant.calibrate_method",
                 f"must be one of {', '.join(self.methods)}, got {self.calibrate_method!r}")

    def options(self, ctx: Context) -> dict[str, Any]:
        return {"calibration": ctx.calibration(self.calibration_samples),
                "per_channel": self.per_channel, "calibrate_method": self.calibrate_method,
                "format": self.format}


@dataclass
class Int16x8Quant(StaticQuant):
    """16-bit activations, 8-bit weights: ONNX Runtime stores them in QDQ format only."""

    formats: ClassVar[tuple[str, ...]] = ("qdq",)

    name: str = "int16x8"
    format: str = "qdq"


@dataclass
class QATQuant(_Quantize):
    """Quantization-aware training with Brevitas, exported to ONNX as QCDQ.

    Attributes:
        weight_bits: bits of the weights, 2..8.
        act_bits: bits of the activations, 2..8.
        epochs: fine-tuning epochs (early stopping still applies).
        lr: the QAT fine-tune's learning rate (instead of ``finetune.lr``/``optim.lr``; the
            rest of ``optim`` and ``finetune`` as configured). A tenth of training's: QAT
            starts from a trained model, which the training rate shakes off its optimum.
        fold_bn: fold each BatchNorm into the Conv/Linear before it first, so QAT trains the
            weights the deployed graph holds (post-training quantization folds them too).
    """

    name: str = "qat"
    weight_bits: int = 8
    act_bits: int = 8
    epochs: int = 10
    lr: float = 1.0e-4
    fold_bn: bool = True

    def __post_init__(self) -> None:
        for key in ("weight_bits", "act_bits"):
            value = getattr(self, key)
            _require(2 <= value <= 8, f"quant.{key}", f"must be an int in [2, 8], got {value}")
        _require(self.epochs >= 1, "quant.epochs", f"must be an int >= 1, got {self.epochs}")
        _require(self.lr > 0, "quant.lr", f"must be a number > 0, got {self.lr}")

    def label(self) -> str:
        return f"qat-w{self.weight_bits}a{self.act_bits}"

    def prepare(self, net: Any, ctx: Context) -> Any:
        """The QAT network before training: BatchNorm folded, quantizers calibrated."""
        import torch

        from tinyexp.compress.fold import fold_batchnorm
        from tinyexp.compress.qat import calibrate, to_qat

        if self.fold_bn:
            net = fold_batchnorm(net, ctx.example)
        qnet = to_qat(net, self.weight_bits, self.act_bits)
        # Activation ranges from the training and the validation inputs, so QAT starts where
        # the float model is (fresh quantizers clip to [-1, 1]). Validation too: a window whose
        # activations leave the calibrated range is clipped and reconstructed badly, and the
        # anomaly threshold is set on the training series' windows, the validation part too.
        x = torch.cat([torch.from_numpy(ctx.calibration(sys.maxsize)),
                       *(b[0] if isinstance(b, (tuple, list)) else b
                         for b in ctx.datamodule.val_dataloader())])
        keep = torch.linspace(0, len(x) - 1, min(len(x), QAT_CALIBRATION_INPUTS)).round().long()
        return calibrate(qnet, x[keep.unique()])

    def quantize(self, net: Any, ctx: Context, artifact: Path) -> tuple[Any, dict[str, Any]]:
        import copy

        from tinyexp.compress.qat import export_qcdq, validation_loss

        qnet = self.prepare(net, ctx)
        # The calibrated network is epoch 0 of the fine-tune, and a candidate like every epoch:
        # training restores its best validation epoch, and the start wins when no epoch beats
        # it (at 8 bits it is often as good as the float model and training only drifts).
        start, start_loss = copy.deepcopy(qnet.state_dict()), validation_loss(qnet, ctx.datamodule)
        info = ctx.fit(qnet, "qat", self.epochs, lr=self.lr)
        kept = validation_loss(qnet, ctx.datamodule) > start_loss
        if kept:
            log.info("quant=qat: no epoch beat the calibrated start on validation; keeping it")
            qnet.load_state_dict(start)
        ctx.tags["tinyexp.qat_weights"] = "calibrated" if kept else "fine-tuned"
        export_qcdq(qnet, ctx.example, artifact, ctx.opset)
        return qnet, {"epochs": info["epochs"]}
