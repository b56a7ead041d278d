"""Post-training quantization of an exported ONNX model with ONNX Runtime's tools.

Four modes, named after the TFLite converter options the studies we reproduce compare:

* ``dynamic``: int8 weights, activations quantized on the fly (dynamic range).
* ``int8``: full-integer static quantization, weights and activations int8, calibrated on
  training data (stored as integer operators or as QDQ pairs).
* ``int16x8``: static quantization with 16-bit activations and 8-bit weights.
* ``fp16``: float16 weights and compute.

Their settings (per-channel weights, calibration method, storage format, how many calibration
samples) have no defaults here: the ``quant`` config group owns them, and ``quantize_onnx``
refuses a mode whose settings are missing rather than guess.

The result is a file ONNX Runtime runs: the numbers measured on it are the deployed model's.
ONNX Runtime does not quantize every operator in every mode (static QDQ keeps ``LSTM`` in
float, dynamic mode has no ``ConvTranspose``); ``float_compute_ops`` finds what stayed float so
the pipeline records the fallback instead of hiding it.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from tinyexp.files import atomic_write
from tinyexp.measure.cost import ort_optimized
from tinyexp.stages.quant import CALIBRATE_METHODS, FORMATS  # the quant schema's allowed values

# Operators that carry the multiply-accumulates: the ones whose precision matters.
COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM",
               "FusedConv", "FusedGemm", "FusedMatMul"}  # ONNX Runtime's fused float kernels
STATIC_MODES = ("int8", "int16x8")
MODES = ("dynamic", *STATIC_MODES, "fp16")


class _Calibration:
    """ONNX Runtime calibration reader over a numpy batch, one batch-1 sample at a time."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self.input_name = input_name
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self._iter: Iterator[dict] | None = None

    def get_next(self) -> dict | None:
        if self._iter is None:
            self._iter = ({self.input_name: s[None]} for s in self.samples)
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


def _static(src: Path, dst: Path, mode: str, calibration: np.ndarray, per_channel: bool,
            calibrate_method: str, format: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(dst.stem + ".prep.onnx")
    # Symbolic shape inference fails on the transformer graphs; ONNX's own is enough here.
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    # uint8 activations with int8 weights is ONNX Runtime's fast path on x86 (u8s8 kernels).
    activation = QuantType.QInt16 if mode == "int16x8" else QuantType.QUInt8
    # QOperator stores integer operators (QLinearConv, QGemm): what an int8 deployment runs,
    # and smaller than QDQ's quantize/dequantize pairs. 16-bit activations exist only as QDQ.
    quant_format = QuantFormat.QOperator if (
        format == "qoperator" and mode == "int8") else QuantFormat.QDQ
    root = logging.getLogger()
    level = root.level
    # The quantizer warns on the root logger for every 1-D tensor it cannot quantize per
    # channel (LayerNorm weights); those stay per-tensor, which is what we want anyway.
    root.setLevel(logging.ERROR)
    try:
        with _entropy_histogram_bins(ENTROPY_BINS):
            quantize_static(
                str(prepared), str(dst), _Calibration("input", calibration),
                quant_format=quant_format, activation_type=activation,
                weight_type=QuantType.QInt8, per_channel=per_channel,
                calibrate_method=method,
            )
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)


# Histogram bins for entropy calibration. ONNX Runtime defaults to 128 bins for 128 quantized
# levels, which leaves the KL search one candidate, the full range: entropy then gives min-max's
# scales exactly. 2048 bins (as TensorRT's entropy calibrator uses) let it clip outliers.
ENTROPY_BINS = 2048


@contextmanager
def _entropy_histogram_bins(bins: int) -> Iterator[None]:
    """Make ``quantize_static`` build its entropy calibrator with ``bins`` histogram bins.

    ``quantize_static`` passes no ``num_bins`` to ``create_calibrator`` (it forwards only a few
    named options), so the call is wrapped for the duration of one quantization.
    """
    # the module, not the function of the same name that the package re-exports
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    original = ort_quantize.create_calibrator

    def create_calibrator(*args, **kwargs):
        kwargs["extra_options"] = {"num_bins": bins, **(kwargs.get("extra_options") or {})}
        return original(*args, **kwargs)

    ort_quantize.create_calibrator = create_calibrator
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original


def _dynamic(src: Path, dst: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)


def _fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Inputs and outputs stay float32 so the same data feeds every stage.
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    # The converter appends its input casts at the end of the node list; ONNX wants the
    # nodes in execution order.
    _sort_topologically(model.graph)
    onnx.save(model, str(dst))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise ValueError("graph has a cycle or an input nobody produces")
        ordered += runnable
        for node in runnable:
            ready.update(node.output)
        taken = {id(n) for n in runnable}
        pending = [n for n in pending if id(n) not in taken]
    del graph.node[:]
    graph.node.extend(ordered)


def _check_settings(mode: str, calibration: np.ndarray | None, per_channel: bool | None,
                    calibrate_method: str | None, format: str | None) -> None:
    """Refuse an unknown mode, and a setting the mode uses but was not given or is unknown."""
    if mode not in MODES:
        raise ValueError(f"unknown post-training quantization mode {mode!r}")
    needed = {"per_channel": (per_channel, (True, False))} if mode != "fp16" else {}
    if mode in STATIC_MODES:
        needed["calibrate_method"] = (calibrate_method, CALIBRATE_METHODS)
        if calibration is None or len(calibration) == 0:
            raise ValueError(f"quant={mode} needs calibration samples")
    if mode == "int8":
        needed["format"] = (format, FORMATS)
    for name, (value, allowed) in needed.items():
        if value is None:
            raise ValueError(f"quant={mode} needs {name}")
        if value not in allowed:
            raise ValueError(f"quant={mode}: {name} must be one of {allowed}, got {value!r}")


def quantize_onnx(src: Path, dst: Path, mode: str, calibration: np.ndarray | None = None, *,
                  per_channel: bool | None = None, calibrate_method: str | None = None,
                  format: str | None = None) -> Path:
    """Quantize the float ONNX model ``src`` into ``dst`` (written whole or not at all).

    The settings have no defaults here (the ``quant`` config group owns them); each mode needs
    the ones it uses and ignores the others, which may then be ``None``:

    =========== ============================================================
    mode        needs
    =========== ============================================================
    ``dynamic`` ``per_channel``
    ``int8``    ``calibration``, ``per_channel``, ``calibrate_method``, ``format``
    ``int16x8`` ``calibration``, ``per_channel``, ``calibrate_method`` (always QDQ)
    ``fp16``    nothing
    =========== ============================================================

    Args:
        src: float model exported by ``measure.cost.export_onnx``.
        dst: where the quantized model goes.
        mode: ``dynamic``, ``int8``, ``int16x8`` or ``fp16``.
        calibration: input samples (N, ...) for the static modes, all of them used.
        per_channel: one weight scale per output channel instead of one per tensor.
        calibrate_method: how activation ranges are set: ``minmax``, ``entropy`` or
            ``percentile``.
        format: ``qoperator`` (integer operators: QLinearConv, QGemm, ...) or ``qdq``
            (QuantizeLinear/DequantizeLinear pairs around float operators).

    Returns:
        ``dst``.

    Raises:
        ValueError: If ``mode`` is unknown, or a setting it needs is missing or unknown.
    """
    _check_settings(mode, calibration, per_channel, calibrate_method, format)
    src = Path(src)

    def write(tmp: Path) -> None:
        if mode in STATIC_MODES:
            _static(src, tmp, mode, calibration, per_channel, calibrate_method, format)
        elif mode == "dynamic":
            _dynamic(src, tmp, per_channel)
        else:
            _fp16(src, tmp)

    return atomic_write(dst, write)


def float_compute_ops(path: Path) -> Counter:
    """Compute operators that ONNX Runtime still runs in float32, by type.

    Read off the graph as ONNX Runtime optimizes it for the CPU: a QDQ ``Conv`` it can fuse
    becomes ``QLinearConv``; one it cannot (``ConvTranspose``, ``LSTM``) stays a float op
    between Dequantize and Quantize nodes, and is counted here.
    """
    with ort_optimized(path) as optimized:
        graph = onnx.shape_inference.infer_shapes(onnx.load(str(optimized))).graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*graph.input, *graph.value_info, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    left: Counter = Counter()
    for node in graph.node:
        if node.op_type in COMPUTE_OPS and types.get(node.input[0]) == onnx.TensorProto.FLOAT:
            left[node.op_type] += 1
    return left


def weight_bytes(path: Path) -> float:
    """Bytes of the stored tensors at their bit-width, packed.

    Every initializer counts at its element size, except integer tensors that the graph clips
    to a narrower range before use (Brevitas' QCDQ export of sub-8-bit weights): those count
    at the clipped bit-width, so 4-bit weights take half a byte each.
    """
    graph = onnx.load(str(path)).graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # tensors stored in Constant nodes (clip bounds, shapes, ...)
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                consts[node.output[0]] = onnx.numpy_helper.to_array(attr.t)
    clipped_bits: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Clip" and len(node.input) == 3 and node.input[0] in consts:
            low, high = consts.get(node.input[1]), consts.get(node.input[2])
            if low is not None and high is not None:
                levels = int(np.asarray(high).item()) - int(np.asarray(low).item()) + 1
                clipped_bits[node.input[0]] = max(1, int(np.ceil(np.log2(levels))))
    return sum(array.size * clipped_bits.get(name, array.dtype.itemsize * 8) / 8
               for name, array in consts.items())
