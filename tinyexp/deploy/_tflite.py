"""Reading and slimming TFLite flatbuffers with the schema's Python object API.

The converter writes what a phone wants: every tensor named after its module path
("tinyexp.models.custom_cnn.CustomCNN/torch.nn.modules.container.Sequential_features/..."),
a signature table, metadata for the full runtime and one empty buffer per activation. On a
microcontroller none of it is read, and in a small model the names alone outweigh the weights.
:func:`strip` drops them; the operators, tensors, quantization and weights stay as they were,
so TFLite Micro runs the slim file to the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Metadata the MCU never reads: the full runtime's version check and converter bookkeeping.
# Anything else (TFLM's "OfflineMemoryAllocation", compression metadata) is kept.
DROPPABLE_METADATA = {b"min_runtime_version", b"keep_stablehlo_constant", b"CONVERSION_METADATA"}
BUFFER_ALIGN = 16  # the schema's force_align for Buffer.data; TFLite's own writer honours it


def schema() -> Any:
    """The generated TFLite schema module (both packages ship the same file)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # tflite-micro alone is enough to inspect a file
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    return schema_py_generated


def is_tflite(data: bytes) -> bool:
    """True if ``data`` carries the TFLite file identifier ("TFL3" at bytes 4-8)."""
    return len(data) >= 8 and data[4:8] == b"TFL3"


def load(data: bytes) -> Any:
    """Unpack a flatbuffer into the schema's mutable ``ModelT``."""
    fb = schema()
    return fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))


def _names(enum: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def op_name(model: Any, op: Any) -> str:
    """Builtin operator name of ``op`` ("CONV_2D"); custom operators give "CUSTOM:<code>"."""
    fb = schema()
    code = model.operatorCodes[op.opcodeIndex]
    # Codes above 127 live in builtinCode; old files keep small codes in the deprecated byte.
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = _names(fb.BuiltinOperator).get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        return f"CUSTOM:{custom}"
    return name


def dtype_name(tensor: Any) -> str:
    """Lower-case element type of a tensor ("int8", "float32")."""
    return _names(schema().TensorType)[tensor.type].lower()


@dataclass(frozen=True)
class TensorInfo:
    """Shape, element type and (per-tensor) quantization of a graph input or output."""

    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None


def tensor_info(tensor: Any) -> TensorInfo:
    q = tensor.quantization
    scale = zero_point = None
    if q is not None and q.scale is not None and len(q.scale):
        scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
    return TensorInfo(tuple(int(d) for d in tensor.shape), dtype_name(tensor), scale, zero_point)


def ops(model: Any) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(operator, input dtypes, output dtypes) for every operator of every subgraph, in order."""
    out = []
    for sg in model.subgraphs:
        for op in sg.operators or []:
            ins = tuple(dtype_name(sg.tensors[i]) for i in op.inputs if i >= 0)
            outs = tuple(dtype_name(sg.tensors[i]) for i in op.outputs if i >= 0)
            out.append((op_name(model, op), ins, outs))
    return out


def float_ops(model: Any) -> list[str]:
    """Operators computing in float in a model whose input is an integer tensor.

    DEQUANTIZE is the border of a float island, not its work, so it is left out. An all-float
    model returns an empty list: nothing fell back, there was no integer path to fall from.
    """
    sg = model.subgraphs[0]
    if dtype_name(sg.tensors[sg.inputs[0]]).startswith("float"):
        return []
    return [name for name, _, outs in ops(model)
            if name != "DEQUANTIZE" and any(o.startswith("float") for o in outs)]


def weight_bytes(model: Any) -> int:
    """Bytes of constant tensor data: weights, biases and the small shape/permutation constants."""
    used = {t.buffer for sg in model.subgraphs for t in sg.tensors}
    return sum(len(model.buffers[b].data) for b in used
               if b > 0 and model.buffers[b].data is not None)


def strip(data: bytes) -> bytes:
    """Drop what TFLite Micro does not read; return the re-serialized flatbuffer.

    Removed: tensor and subgraph names, the description, signature definitions, droppable
    metadata (with its buffers), shape signatures equal to the static shape, min/max ranges
    beside scale/zero point, and the per-activation empty buffers (tensors without data point
    at buffer 0, the schema's empty sentinel). Files with external buffers are returned as is.
    """
    model = load(data)
    if model.externalBuffers or model.externalBufferGroups or any(
        b.offset for b in model.buffers
    ):
        return data  # weights stored outside the flatbuffer: leave the layout alone
    model.description = None
    model.signatureDefs = None
    kept_meta = [m for m in model.metadata or [] if m.name not in DROPPABLE_METADATA]
    for sg in model.subgraphs:
        sg.name = None
        if sg.debugMetadataIndex >= 0:  # debug info only
            drop = (model.metadata or [])[sg.debugMetadataIndex]
            kept_meta = [m for m in kept_meta if m is not drop]
            sg.debugMetadataIndex = -1
        for t in sg.tensors:
            t.name = None
            if t.shapeSignature is not None and list(t.shapeSignature) == list(t.shape):
                t.shapeSignature = None
            q = t.quantization
            if q is not None:
                q.min = q.max = None
                if (q.scale is None or not len(q.scale)) and q.details is None:
                    t.quantization = None

    # Renumber buffers: 0 stays the empty sentinel, constant data and kept metadata follow.
    remap: dict[int, int] = {}
    buffers = [model.buffers[0]]

    def keep(index: int) -> int:
        b = model.buffers[index]
        if index == 0 or b.data is None or not len(b.data):
            return 0
        if index not in remap:
            remap[index] = len(buffers)
            buffers.append(b)
        return remap[index]

    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = keep(t.buffer)
    for m in kept_meta:
        m.buffer = keep(m.buffer)
    model.metadataBuffer = None  # deprecated index list; the metadata table says the same
    model.metadata = kept_meta or None
    model.buffers = buffers
    return pack(model)


class _Packed:
    """A buffer table written ahead of the model, so its data can be 16-byte aligned."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the schema's object API name
        return self.offset


def pack(model: Any) -> bytes:
    """Serialize a ``ModelT`` with "TFL3" and every buffer's data aligned to 16 bytes.

    The generated ``BufferT.Pack`` aligns byte vectors to 1; int32/int64 biases read from an
    unaligned address fault on cores without unaligned access (Cortex-M0), so the buffers are
    written first with the schema's ``force_align: 16``.
    """
    import flatbuffers

    fb = schema()
    builder = flatbuffers.Builder(1024)
    originals = model.buffers
    packed = []
    for b in originals:
        data = None
        if b.data is not None and len(b.data):
            raw = np.asarray(b.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGN)
            builder.head -= len(raw)  # what CreateNumpyVector does, at our alignment
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        packed.append(_Packed(fb.BufferEnd(builder)))
    model.buffers = packed
    try:
        root = model.Pack(builder)
    finally:
        model.buffers = originals
    builder.Finish(root, file_identifier=b"TFL3")
    return bytes(builder.Output())

