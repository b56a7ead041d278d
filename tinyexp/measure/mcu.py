"""Flash and RAM of an ONNX artifact as TensorFlow Lite Micro would need them, without TFLite.

tinyexp measures ONNX files, but deploys ``.tflite`` flatbuffers to TFLite Micro (TFLM). The
artifact is read back as the network it came from and lowered as litert-torch lowers it
(:mod:`tinyexp.measure._tflite_graph`), given the element types of the artifact's mode as
``tinyexp.deploy`` exports it (:func:`set_precision`), then sized and planned like the
flatbuffer writer and TFLM's allocator:

* ``flash_bytes``: the stripped ``.tflite`` (weights, quantization parameters, tensor and
  operator tables) from the flatbuffer layout's per-table costs (``_FB_*``);
* ``arena_bytes``: TFLM's tensor arena, a head and a tail. The head is the high-water mark of
  TFLM's GreedyMemoryPlanner over the activations and scratch buffers (:func:`greedy_plan`,
  :func:`plan_head`); in a small model the planner's own working memory can exceed it
  (:func:`planning_bytes`). The tail holds the persistent allocations (:func:`tail_bytes`):
  per tensor a TfLiteEvalTensor, per operator a NodeAndRegistration and its kernel's OpData
  with int32 multipliers and shifts per output channel, BATCH_MATMUL's copy of its right
  operand, int16 softmax tables, the allocator's own objects.

Sizes are those of TFLM's x86-64 host build, which ``tinyexp.deploy.tflm`` measures; on a
32-bit Cortex-M pointer-sized fields halve (a TfLiteEvalTensor is 12 bytes, not 24), so the
tail there is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from tinyexp.measure._tflite_graph import Graph, Op, Unsupported, artifact_mode, lower

__all__ = ["McuEstimate", "Unsupported", "estimate", "flatbuffer_bytes", "greedy_plan",
           "plan_head", "planning_bytes", "set_precision", "tail_bytes"]

# From the sources (tensorflow/tflite-micro, 2026-08):
ALIGN = 16  # micro_arena_constants.h MicroArenaBufferAlignment: planned and persistent buffers
_PLAN_INFO = 32  # sizeof(AllocationInfo) (micro_allocation_info.h), per tensor while planning
_PLAN_PER_BUFFER = 40  # GreedyMemoryPlanner::per_buffer_size(), per planned buffer
_TAIL_EVAL_TENSOR = 24  # sizeof(TfLiteEvalTensor): AllocateTfLiteEvalTensors, every tensor
_TAIL_NODE = 64  # sizeof(NodeAndRegistration): AllocateNodeAndRegistrations, every operator
_PER_CHANNEL = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"}  # *Prepare allocates an
# int32 multiplier and shift per output channel even in float; FULLY_CONNECTED when quantized
# Read off RecordingMicroAllocator (print_allocations) on the host build, model by model and
# for every prefix of a model's operators, and consistent with the structs they come from:
_TAIL_FIXED = 520  # allocator, planner, builtin-data allocator, SubgraphAllocations objects
_TAIL_IO_TENSOR = 64  # persistent TfLiteTensor the interpreter keeps per input and output
_TAIL_IO_QUANT = 32  # ... its TfLiteAffineQuantization and arrays, when it is quantized
_PLAN_FIXED = -16  # subgraph offsets (+16), less the input/output pointer arrays the
#                    interpreter adds to the tail after planning (-32)
# Each kernel's OpData (Init) plus its parsed builtin options, as allocated (rounded):
_OPDATA = {"CONV_2D": 112, "DEPTHWISE_CONV_2D": 112, "TRANSPOSE_CONV": 112,
           "FULLY_CONNECTED": 112, "MAX_POOL_2D": 72, "AVERAGE_POOL_2D": 72, "PAD": 64,
           "RESHAPE": 32, "RELU": 32, "RELU6": 32, "QUANTIZE": 32, "DEQUANTIZE": 32,
           "ADD": 80, "SUB": 80, "MUL": 48, "SQUARED_DIFFERENCE": 112, "MEAN": 72,
           "RSQRT": 32, "SOFTMAX": 80, "LOGISTIC": 16, "TANH": 16, "BATCH_MATMUL": 96,
           "TRANSPOSE": 0, "SLICE": 0, "STRIDED_SLICE": 48, "CONCATENATION": 64,
           "GATHER": 0, "GELU": 32}  # GELU: TFLM has no kernel; LOGISTIC-like assumed
# Flatbuffer bytes of the stripped file as the python flatbuffers builder writes it (vtables
# shared), measured by adding one table of each kind to a packed model; the two marked
# "fitted" are corrections fitted over 28 converted files:
_FB_FIXED = 690  # file header, Model, SubGraph, buffer 0 (120, +570 fitted)
_FB_OPCODE = 16  # OperatorCode table + vector slot
_FB_TENSOR = 20  # Tensor table + vector slot + shape vector length (+4 per dimension)
_FB_BUFFER = 12  # Buffer table + vector slot + data length (data padded to 16)
_FB_OP = 24  # Operator table + vector slot + input/output vector lengths (+4 per tensor)
_FB_OPTIONS = 16  # builtin options table (most operators have one)
_FB_QUANT = 34  # QuantizationParameters table and vector lengths (25, +9 fitted)
_FB_QUANT_CHANNEL = 12  # float32 scale + int64 zero point
_NO_OPTIONS = {"TRANSPOSE", "RELU", "RELU6", "LOGISTIC", "TANH", "RSQRT", "QUANTIZE",
               "DEQUANTIZE", "SLICE", "PAD", "SQUARED_DIFFERENCE", "GELU"}
# The int8 export (litert-torch PT2E, symmetric, per channel), as seen operator by operator:
_INT_KERNELS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D",
                "AVERAGE_POOL_2D"}  # integer in and out (MUL too, unless LayerNorm's)
_MOVES = {"RESHAPE", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "PAD", "GATHER", "CONCATENATION"}
WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def greedy_plan(buffers: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """Offsets and high-water mark of TFLM's GreedyMemoryPlanner (greedy_memory_planner.cc).

    ``buffers`` are ``(size, first_use, last_use)`` in the order TFLM adds them (tensor index);
    lifetimes are inclusive. Largest first (ties: later-added first, as TFLM fills its sort
    array from the back and bubble-sorts stably); each buffer goes to the lowest offset clear
    of every placed buffer whose lifetime overlaps its own.
    """
    order = sorted(reversed(range(len(buffers))), key=lambda i: -buffers[i][0])
    placed: list[tuple[int, int]] = []  # (offset, buffer), by offset, then insertion
    offsets = [0] * len(buffers)
    for i in order:
        size, first, last = buffers[i]
        offset = 0
        for at, j in placed:
            if buffers[j][1] > last or first > buffers[j][2]:
                continue  # not alive at the same time
            if at - offset >= size:
                break  # fits in the gap below this one
            offset = max(offset, at + buffers[j][0])
        offsets[i] = offset
        k = sum(1 for at, _ in placed if at <= offset)
        placed.insert(k, (offset, i))
    return offsets, max((o + b[0] for o, b in zip(offsets, buffers, strict=True)), default=0)


def _buffers(graph: Graph) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(size, first, last) of the planned tensors and of the kernels' scratch buffers, with
    lifetimes as micro_allocation_info.cc marks them: inputs from scope 0, operator i at scope
    i + 1, outputs to the end; sizes rounded up to ALIGN (micro_allocator.cc CreatePlan)."""
    n = len(graph.tensors)
    first, last = [-1] * n, [-1] * n
    for t in graph.inputs:
        first[t] = last[t] = 0
    scratch = []
    for i, op in enumerate(graph.ops, start=1):
        for t in op.outs:
            first[t] = i if first[t] < 0 else first[t]
            last[t] = i
        for t in op.ins:
            last[t] = i
        if op.name == "TRANSPOSE_CONV" and graph.tensors[op.ins[2]].dtype in ("i8", "i16"):
            sums = 8 if graph.tensors[op.ins[2]].dtype == "i16" else 4  # int64 / int32
            elements = int(np.prod(graph.tensors[op.outs[0]].shape))  # (transpose_conv.cc)
            scratch.append((_align(elements * sums), i, i))
    for t in graph.outputs:
        first[t] = len(graph.ops) if first[t] < 0 else first[t]
        last[t] = len(graph.ops)
    return [(_align(graph.nbytes(t)), first[t], last[t]) for t in range(n)
            if not graph.tensors[t].const and graph.nbytes(t) and first[t] >= 0], scratch


def plan_head(graph: Graph) -> int:
    """TFLM's head for a lowered graph: the greedy plan of its activations and scratch."""
    tensors, scratch = _buffers(graph)
    return greedy_plan(tensors + scratch)[1]


def planning_bytes(graph: Graph) -> int:
    """Head-side memory TFLM needs while it plans (CommitStaticMemoryPlan): an AllocationInfo
    per tensor and scratch buffer, the planner's working arrays per buffer. In a small model
    this, not the plan, sets the smallest arena that works."""
    tensors, scratch = _buffers(graph)
    return (_PLAN_FIXED + _PLAN_INFO * (len(graph.tensors) + len(scratch))
            + _PLAN_PER_BUFFER * (len(tensors) + len(scratch)))


def _align(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _op_tail(graph: Graph, op: Op) -> int:
    size = _TAIL_NODE + _OPDATA.get(op.name, 48)
    quantized = any(graph.tensors[t].dtype in ("i8", "i16") for t in op.ins)
    if op.name in _PER_CHANNEL or (op.name == "FULLY_CONNECTED" and quantized):
        weights = graph.tensors[op.ins[1]].shape  # output channels first; depthwise: last
        size += 2 * _align(4 * weights[-1 if op.name == "DEPTHWISE_CONV_2D" else 0])
    if op.name == "BATCH_MATMUL":  # a transposed copy of the right operand (adj_y false)
        size += _align(graph.nbytes(op.ins[1])) + (32 if quantized else 0)
    if op.name == "SOFTMAX" and graph.tensors[op.ins[0]].dtype == "i16":
        size += 2 * _align(2 * 513)  # softmax_common.cc: exp and 1/(1+x) int16 tables
    return size


def tail_bytes(graph: Graph) -> int:
    """TFLM's persistent (tail) allocations for a lowered graph, host build."""
    io = [*graph.inputs, *graph.outputs]
    return (_TAIL_FIXED + _TAIL_EVAL_TENSOR * len(graph.tensors)
            + sum(_op_tail(graph, op) for op in graph.ops)
            + sum(_TAIL_IO_TENSOR + (_TAIL_IO_QUANT if graph.tensors[t].channels else 0)
                  for t in io))


def flatbuffer_bytes(graph: Graph) -> int:
    """Bytes of the stripped ``.tflite`` for a lowered graph (no names, metadata, signatures;
    constant data 16-byte aligned)."""
    size = _FB_FIXED + _FB_OPCODE * len({op.name for op in graph.ops})
    for t, tensor in enumerate(graph.tensors):
        size += _FB_TENSOR + 4 * len(tensor.shape)
        if tensor.channels:
            size += _FB_QUANT + _FB_QUANT_CHANNEL * tensor.channels
        if tensor.const:
            size += _FB_BUFFER + _align(graph.nbytes(t))
    for op in graph.ops:
        size += _FB_OP + 4 * (len(op.ins) + len(op.outs))
        size += 0 if op.name in _NO_OPTIONS else _FB_OPTIONS
    return size


def _integer_kernel(op: Op, mode: str) -> bool:
    """Computes in integers: int8 (PT2E) quantizes convolutions, linear layers, pooling and MUL
    (not LayerNorm's); int16x8 (ai-edge-quantizer) everything but SQUARED_DIFFERENCE."""
    if mode == "int16x8":
        return op.name != "SQUARED_DIFFERENCE"
    return op.name in _INT_KERNELS or (op.name == "MUL" and not op.float_only)


def _follows_input(op: Op) -> bool:  # integer exactly when its input is
    return op.name in _MOVES | {"RELU", "RELU6", "GELU", "LOGISTIC", "TANH", "BATCH_MATMUL"}


def set_precision(g: Graph, mode: str) -> None:
    """Element types and quantization parameters of ``mode``, as ``tinyexp.deploy`` exports:
    fp16 float16 weights behind DEQUANTIZE, dynamic int8 weights, int8 and int16x8 integer
    kernels with QUANTIZE/DEQUANTIZE where they meet float ones."""
    for op in [op for op in g.ops if op.name in WEIGHTED and mode in ("fp16", "dynamic")]:
        w = g.tensors[op.ins[1]]
        if mode == "dynamic":  # int8 weights, one scale per output channel
            w.dtype, w.channels = "i8", w.shape[-1 if op.name == "DEPTHWISE_CONV_2D" else 0]
        else:  # float16 weights, dequantized by an operator of their own
            w.dtype, at = "f16", g.ops.index(op)
            g.ops.insert(at, Op("DEQUANTIZE", [op.ins[1]], [g.tensor(w.shape)]))
            op.ins[1] = g.ops[at].outs[0]
    if mode not in ("int8", "int16x8"):
        return
    is_int = dict.fromkeys(g.inputs, False)
    for op in g.ops:  # forward: integer kernels, and what follows an integer input
        is_int[op.outs[0]] = _integer_kernel(op, mode) or not op.float_only and _follows_input(
            op) and all(is_int[t] for t in op.ins if not g.tensors[t].const)
    users: dict[int, list[Op]] = {}
    for op in g.ops:
        for t in op.ins:
            users.setdefault(t, []).append(op)
    for op in [*reversed(g.ops), None]:  # backward: data movement feeding integer kernels
        t = op.outs[0] if op else g.inputs[0]  # (the graph input: quantized by the caller)
        if (op is None or op.name in _MOVES) and users.get(t) and all(
                _integer_kernel(u, mode) or u.name in _MOVES and is_int[u.outs[0]]
                for u in users[t]):
            is_int[t] = True
    ops, converted = [], {}
    for op in g.ops:  # QUANTIZE / DEQUANTIZE where an integer and a float kernel meet
        wanted = _integer_kernel(op, mode) or _follows_input(op) and is_int[op.outs[0]]
        for i, t in enumerate(op.ins):
            if not g.tensors[t].const and is_int[t] != wanted:
                if (t, wanted) not in converted:
                    converted[(t, wanted)] = g.tensor(g.tensors[t].shape)
                    is_int[converted[(t, wanted)]] = wanted
                    ops.append(Op("QUANTIZE" if wanted else "DEQUANTIZE", [t],
                                  [converted[(t, wanted)]]))
                op.ins[i] = converted[(t, wanted)]
        ops.append(op)
    g.ops, activation = ops, "i8" if mode == "int8" else "i16"
    for t in [t for t, integer in is_int.items() if integer]:
        g.tensors[t].dtype, g.tensors[t].channels = activation, 1
    for op in [op for op in g.ops if is_int[op.outs[0]]]:
        if op.name in WEIGHTED:  # per-channel int8 weights, 32-bit (16x8: 64-bit) bias
            w, b = g.tensors[op.ins[1]], g.tensors[op.ins[-1]]
            w.dtype, b.dtype = "i8", "i32" if mode == "int8" else "i64"
            w.channels = b.channels = b.shape[0]
        else:  # other float constants an integer kernel reads are quantized like activations
            for t in [t for t in op.ins if g.tensors[t].const and g.tensors[t].dtype == "f32"]:
                g.tensors[t].dtype, g.tensors[t].channels = activation, 1


@dataclass(frozen=True)
class McuEstimate:
    """Estimated TFLite Micro cost of an artifact (see the module docstring)."""

    mode: str  # the TFLite mode the artifact corresponds to
    flash_bytes: int
    head_bytes: int  # the planned activations
    tail_bytes: int
    planning_bytes: int  # head-side memory while planning (see planning_bytes)
    ops: tuple[str, ...]  # the lowered graph's operators, in order

    @property
    def arena_bytes(self) -> int:
        """The smallest arena that allocates: the tail, and the larger of plan and planning."""
        return self.tail_bytes + max(self.head_bytes, self.planning_bytes)


def estimate(path: Path) -> McuEstimate:
    """Flash (the stripped ``.tflite``) and TFLM arena (head + tail) of an ONNX artifact.

    Raises:
        Unsupported: a graph TFLite Micro cannot run (an LSTM), or one this lowering does not
            know how to map (an operator it has no rule for, a shape it misreads).
    """
    from tinyexp.measure.cost import _run_every_tensor

    model = onnx.load(str(path))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes.update({k: tuple(np.shape(v)) for k, v in _run_every_tensor(Path(path)).items()})
    mode = artifact_mode(model)
    try:
        graph = lower(model, shapes, mode)
        set_precision(graph, mode)
    except (KeyError, IndexError, ValueError) as err:  # a graph shape this lowering misreads
        if isinstance(err, Unsupported):
            raise
        raise Unsupported(f"cannot map the graph ({type(err).__name__}: {err})") from err
    return McuEstimate(mode, flatbuffer_bytes(graph), plan_head(graph), tail_bytes(graph),
                       planning_bytes(graph), tuple(op.name for op in graph.ops))
