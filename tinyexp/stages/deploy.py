"""Deployment to a microcontroller: ``deploy=tflm``.

The run's final float network is converted to TensorFlow Lite (litert-torch, no TensorFlow)
in one of the four modes of the studies, run in TensorFlow Lite Micro's interpreter on the
test data, and measured as the chip sees it: the flatbuffer's bytes are the flash, TFLM's
tensor arena (planned activations plus persistent buffers) the RAM. The C sources a firmware
engineer pastes in (model array, a minimal TFLM program) are attached to the run.

A network or mode that does not convert or load ends the stage with one line on the run
(``tinyexp.deploy_status``); the other stages' results stay, and nothing falls back to float
silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from tinyexp.schemas import _require
from tinyexp.stages.base import Context, Stage

log = logging.getLogger(__name__)

ARTIFACT = "deployed.tflite"
MODES = ("float32", "dynamic", "int8", "fp16", "int16x8")
# deploy.mode null: the TFLite mode of the quantization stage that ran (none -> float32)
_QAT_REFUSED = ("quant={quant}: a QAT (Brevitas) network does not convert to TFLite; deploy "
                "with quant=none and deploy.mode=int8 (or another mode) to quantize for TFLite")
FOLLOW_QUANT = {None: "float32", "dynamic": "dynamic", "int8": "int8", "fp16": "fp16",
                "int16x8": "int16x8"}


@dataclass
class TFLMDeploy(Stage):
    """Convert to TFLite, run in TFLite Micro, measure flash and arena; write the C hand-off.

    Attributes:
        mode: float32, dynamic (int8 weights, float activations), int8 (full integer, int8
            input and output), fp16 (float16 weights) or int16x8 (16-bit activations, 8-bit
            weights); null follows the quantization stage (none -> float32). QAT (Brevitas)
            networks do not convert in any mode: deploy with quant=none and let ``mode``
            quantize for TFLite.
        calibration_samples: training inputs the int8/int16x8 activation ranges come from.
        int8_quantizer: pt2e (PyTorch's PT2E flow in litert-torch: per-channel int8; it
            leaves transposed convolutions in float32 between DEQUANTIZE and QUANTIZE) or aeq
            (ai-edge-quantizer on the float flatbuffer: quantizes those too).
        arena_margin: the generated ``main.cc`` sizes its arena as the measured one times
            ``1 + arena_margin``, rounded up to 16 bytes.
        latency: time the ``.tflite`` in the full TFLite runtime on the host (one thread).
    """

    prefix: ClassVar[str] = "deployed"
    modes: ClassVar[tuple[str, ...]] = MODES

    name: str = "tflm"
    mode: str | None = None
    calibration_samples: int = 256
    int8_quantizer: str = "pt2e"
    arena_margin: float = 0.1
    latency: bool = True

    def __post_init__(self) -> None:
        _require(self.mode is None or self.mode in self.modes, "deploy.mode",
                 f"must be null (follow quant) or one of {', '.join(self.modes)}, "
                 f"got {self.mode!r}")
        _require(self.calibration_samples >= 1, "deploy.calibration_samples",
                 f"must be an int >= 1, got {self.calibration_samples}")
        _require(self.int8_quantizer in ("pt2e", "aeq"), "deploy.int8_quantizer",
                 f"must be pt2e or aeq, got {self.int8_quantizer!r}")
        _require(self.arena_margin >= 0, "deploy.arena_margin",
                 f"must be >= 0, got {self.arena_margin}")

    def check_ready(self) -> None:
        from importlib.util import find_spec

        missing = [m for m in ("litert_torch", "tflite_micro", "ai_edge_litert")
                   if find_spec(m) is None]
        _require(not missing, "deploy", f"deploy={self.name} needs the deploy extra "
                 f"(pip install -e \".[deploy]\"); missing: {', '.join(missing)}")

    def label(self) -> str:
        return f"tflm-{self.mode}" if self.mode else "tflm"

    def resolve_mode(self, ctx: Context) -> str:
        """The TFLite mode: ``mode``, or the one matching the quantization stage that ran."""
        from tinyexp.deploy.export import DeployError

        if self.mode is not None:
            return self.mode
        if ctx.quant not in FOLLOW_QUANT:
            raise DeployError(_QAT_REFUSED.format(quant=ctx.quant))
        return FOLLOW_QUANT[ctx.quant]

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        from tinyexp.deploy.export import DeployError

        try:
            return net, self.deploy(net, ctx)
        except DeployError as err:
            reason = str(err)  # DeployError keeps it to one line
            log.warning("deploy=%s: not deployed: %s", self.name, reason)
            ctx.tags["tinyexp.deploy_status"] = f"failed: {reason}"
            return net, {}

    def deploy(self, net: Any, ctx: Context) -> dict[str, Any]:
        from tinyexp.deploy.csource import write_sources
        from tinyexp.deploy.export import DeployError, export_tflite
        from tinyexp.deploy.tflm import host_latency_ms, inspect, tflm_predict
        from tinyexp.measure.cost import count_params

        mode = self.resolve_mode(ctx)
        if any(type(m).__module__.startswith("brevitas") for m in net.modules()):
            raise DeployError(_QAT_REFUSED.format(quant=ctx.quant))
        artifact = ctx.out_dir / ARTIFACT
        calibration = ctx.calibration(self.calibration_samples)
        report = export_tflite(net.eval(), ctx.example, calibration, mode, artifact,
                               int8_quantizer=self.int8_quantizer)
        found = inspect(artifact)
        if not found.loads:
            raise DeployError(f"TFLite Micro cannot run the {mode} model: {found.error}")
        arena = found.arena_bytes
        metrics = ctx.task_metrics(tflm_predict(artifact, arena_size=arena))
        if self.latency:
            try:
                metrics.update(host_latency_ms(artifact, ctx.example.numpy(),
                                               **ctx.timing))
            except DeployError as err:
                log.warning("deploy: no host latency: %s", err)
        sources = write_sources(artifact, ctx.out_dir / "firmware", arena_bytes=arena,
                                margin=self.arena_margin, sample=calibration[0])
        ctx.artifacts += [(artifact, None), *((p, "firmware") for p in sources)]
        rewrites = report.get("rewrites") or []
        ctx.tags.update({
            "tinyexp.deploy_status": f"ok: {mode}, runs in TFLite Micro",
            "tinyexp.deploy_mode": mode,
            "deployed/ops": ", ".join(found.op_names),
            "tinyexp.deploy_rewrites": "; ".join(rewrites) or "none",
            "tinyexp.deploy_float_ops": ", ".join(found.float_ops) or "none",
        })
        return {**metrics, "params": count_params(net), "flash_bytes": found.flash_bytes,
                "weight_bytes": found.weight_bytes, "arena_bytes": arena,
                "arena_head_bytes": found.arena_head, "arena_tail_bytes": found.arena_tail,
                "ram_bytes": arena, "op_count": len(found.ops),
                "arena_reported_bytes": found.arena_reported,
                "float_compute_ops": len(found.float_ops)}

