"""C++ sources for a TFLite Micro build: the model as a C array and a minimal ``main.cc``.

``model_data.cc`` holds the flatbuffer as ``xxd -i`` would write it, 16-byte aligned as TFLM
requires. ``main.cc`` registers exactly the model's operators in a
``MicroMutableOpResolver<N>`` (every unused kernel left out is flash saved), sizes the arena
from the measured one plus a margin, quantizes one sample with the input's scale and zero
point, invokes the model and prints the dequantized outputs and the arena actually used.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from tinyexp.deploy import _tflite
from tinyexp.deploy.export import DeployError
from tinyexp.files import atomic_write

# Builtin operators with a MicroMutableOpResolver::Add method (TFLM, 2026-08; the method
# names follow the operator names, see _add_method).
TFLM_OPS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND
BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE
DEPTHWISE_CONV_2D DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE EMBEDDING_LOOKUP ELU EQUAL EXP EXPAND_DIMS
FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH
IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGICAL_NOT LOGICAL_OR
LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MIRROR_PAD MEAN MINIMUM MUL NEG NOT_EQUAL PACK PAD PADV2
PRELU QUANTIZE READ_VARIABLE REDUCE_ALL REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND
SPACE_TO_DEPTH SPLIT SPLIT_V SQUEEZE SQRT SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM SVDF
TANH TRANSPOSE_CONV TRANSPOSE UNPACK UNIDIRECTIONAL_SEQUENCE_LSTM VAR_HANDLE WHILE ZEROS_LIKE
""".split())
_METHOD_EXCEPTIONS = {
    "BATCH_MATMUL": "AddBatchMatMul", "CUMSUM": "AddCumSum", "PADV2": "AddPadV2",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}
# Fraction added to the measured arena: another TFLM build or kernel version may plan a few
# hundred bytes differently. The host measure is already generous: it includes the Python
# wrapper's own tensors and 64-bit structures that are smaller on a 32-bit MCU.
DEFAULT_MARGIN = 0.1

# TfLiteTensor data union member and value range per tensor type
_C_TYPES = {"int8": ("int8", "int8_t", -128, 127), "int16": ("i16", "int16_t", -32768, 32767),
            "float32": ("f", "float", None, None)}


def _add_method(op: str) -> str:
    """``CONV_2D`` -> ``AddConv2D``; refuses operators TFLite Micro has no kernel for."""
    if op not in TFLM_OPS:
        raise DeployError(f"operator {op}: TFLite Micro has no kernel for it "
                          f"(no MicroMutableOpResolver::Add method)")
    if op in _METHOD_EXCEPTIONS:
        return _METHOD_EXCEPTIONS[op]
    parts = (p if re.fullmatch(r"\d+D", p) else p.capitalize() for p in op.split("_"))
    return "Add" + "".join(parts)


def model_array(data: bytes, name: str = "g_model_data") -> str:
    """The bytes as an aligned C array plus its length, twelve bytes a line like ``xxd -i``."""
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    body = ",\n".join(f"  {row}" for row in rows)
    return (f"alignas(16) const unsigned char {name}[] = {{\n{body}\n}};\n"
            f"const unsigned int {name}_len = {len(data)};\n")


def write_sources(tflite_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                  arena_bytes: int, margin: float = DEFAULT_MARGIN,
                  sample: np.ndarray | None = None) -> list[Path]:
    """Write ``model_data.h``, ``model_data.cc`` and ``main.cc`` for ``tflite_path``.

    Args:
        tflite_path: the model (single input and output, int8/int16/float32).
        out_dir: created if missing; the three files are written atomically.
        arena_bytes: the measured arena (``Inspection.arena_bytes``).
        margin: fraction of ``arena_bytes`` added (0.1 = 10%) before rounding the arena up
            to a multiple of 16.
        sample: one float input for ``main.cc`` to run (zeros if None).

    Returns:
        The paths of the three files.

    Raises:
        DeployError: an operator TFLite Micro has no kernel for, or an unsupported I/O type.
    """
    from tinyexp.deploy.tflm import read_model

    data, model = read_model(tflite_path)
    sg = model.subgraphs[0]
    ops = sorted({name for name, _, _ in _tflite.ops(model)})
    methods = [_add_method(op) for op in ops]
    inp = _tflite.tensor_info(sg.tensors[sg.inputs[0]])
    out = _tflite.tensor_info(sg.tensors[sg.outputs[0]])
    for role, info in (("input", inp), ("output", out)):
        if info.dtype not in _C_TYPES:
            raise DeployError(f"{tflite_path}: {role} type {info.dtype} has no main.cc template")
    n_in, n_out = int(np.prod(inp.shape)), int(np.prod(out.shape))
    values = np.zeros(n_in, np.float32) if sample is None else np.ravel(sample).astype(np.float32)
    if values.size != n_in:
        raise ValueError(f"sample has {values.size} values, the input {inp.shape} takes {n_in}")
    if not 0 <= margin < 4:
        raise ValueError(f"margin is a fraction of the arena (0.1 = 10%), got {margin}")
    arena = -(-math.ceil(int(arena_bytes) * (1 + margin)) // 16) * 16

    out_dir = Path(out_dir)
    header = ("// Generated by tinyexp.deploy.csource: the TFLite model as a C array.\n"
              "#ifndef TINYEXP_MODEL_DATA_H_\n#define TINYEXP_MODEL_DATA_H_\n\n"
              "extern const unsigned char g_model_data[];\n"
              "extern const unsigned int g_model_data_len;\n\n#endif  // TINYEXP_MODEL_DATA_H_\n")
    source = (f"// Generated by tinyexp.deploy.csource from {Path(tflite_path).name}.\n"
              f'#include "model_data.h"\n\n' + model_array(data))
    main = _main_cc(Path(tflite_path).name, methods, inp, out, n_in, n_out, values,
                    arena, int(arena_bytes), margin)
    return [atomic_write(out_dir / "model_data.h", header),
            atomic_write(out_dir / "model_data.cc", source),
            atomic_write(out_dir / "main.cc", main)]


def _c_float(x: float) -> str:
    """A float literal C++ reads back bit-exact ("0.0f", "1e-05f", "0.0329189673f")."""
    text = f"{float(x):.9g}" if np.isfinite(x) else "0"
    return f"{text}f" if any(c in text for c in ".e") else f"{text}.0f"


def _main_cc(name: str, methods: list[str], inp: _tflite.TensorInfo, out: _tflite.TensorInfo,
             n_in: int, n_out: int, values: np.ndarray, arena: int, measured: int,
             margin: float) -> str:
    in_field, in_type, in_lo, in_hi = _C_TYPES[inp.dtype]
    out_field = _C_TYPES[out.dtype][0]
    sample = ",\n  ".join(", ".join(_c_float(v) for v in values[i:i + 6])
                            for i in range(0, n_in, 6))
    register = "\n".join(f"  if (resolver.{m}() != kTfLiteOk) return kTfLiteError;"
                         for m in methods)
    if in_lo is None:
        fill = "    input->data.f[i] = kSample[i];"
    else:
        fill = (f"    int32_t q = static_cast<int32_t>(std::lround(kSample[i] / kInputScale)) "
                f"+ kInputZeroPoint;\n"
                f"    q = q < {in_lo} ? {in_lo} : (q > {in_hi} ? {in_hi} : q);\n"
                f"    input->data.{in_field}[i] = static_cast<{in_type}>(q);")
    if out.scale is None:
        read = "    const float y = output->data.f[i];"
    else:
        read = (f"    const float y = (static_cast<int32_t>(output->data.{out_field}[i]) "
                f"- kOutputZeroPoint) * kOutputScale;")
    return f"""\
// Generated by tinyexp.deploy.csource from {name}: one inference with TensorFlow Lite Micro.
// Input {inp.dtype} {list(inp.shape)}, output {out.dtype} {list(out.shape)}.
#include <cmath>
#include <cstdint>

#include "model_data.h"
#include "tensorflow/lite/core/c/common.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {{

// Arena measured by TFLite Micro on the host ({measured} bytes) + {margin:.0%} margin,
// rounded up to 16.
constexpr int kTensorArenaSize = {arena};
alignas(16) uint8_t tensor_arena[kTensorArenaSize];

constexpr int kInputSize = {n_in};
constexpr int kOutputSize = {n_out};
constexpr float kInputScale = {_c_float(inp.scale or 0.0)};
constexpr int32_t kInputZeroPoint = {inp.zero_point or 0};
constexpr float kOutputScale = {_c_float(out.scale or 0.0)};
constexpr int32_t kOutputZeroPoint = {out.zero_point or 0};

// One float sample, quantized below with the input's scale and zero point.
const float kSample[kInputSize] = {{
  {sample}
}};

using OpResolver = tflite::MicroMutableOpResolver<{len(methods)}>;

// Exactly the model's operators: every kernel left out is flash saved.
TfLiteStatus RegisterOps(OpResolver& resolver) {{
{register}
  return kTfLiteOk;
}}

}}  // namespace

int main() {{
  const tflite::Model* model = tflite::GetModel(g_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {{
    MicroPrintf("model schema %d, this TFLM reads %d", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return 1;
  }}
  static OpResolver resolver;
  if (RegisterOps(resolver) != kTfLiteOk) {{
    MicroPrintf("registering the operators failed");
    return 1;
  }}
  static tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize);
  if (interpreter.AllocateTensors() != kTfLiteOk) {{
    MicroPrintf("AllocateTensors failed: kTensorArenaSize too small?");
    return 1;
  }}
  TfLiteTensor* input = interpreter.input(0);
  for (int i = 0; i < kInputSize; ++i) {{
{fill}
  }}
  if (interpreter.Invoke() != kTfLiteOk) {{
    MicroPrintf("Invoke failed");
    return 1;
  }}
  const TfLiteTensor* output = interpreter.output(0);
  for (int i = 0; i < kOutputSize; ++i) {{
{read}
    // integers only: not every MCU printf formats floats
    MicroPrintf("output[%d] = %d / 1000000", i, static_cast<int>(std::lround(y * 1e6f)));
  }}
  MicroPrintf("arena used %d of %d bytes", static_cast<int>(interpreter.arena_used_bytes()),
              kTensorArenaSize);
  return 0;
}}
"""
