"""The TFLite graph litert-torch would make of the network behind an ONNX artifact.

The artifact is read back as the float network it came from (quantize/dequantize plumbing
dropped, integer operators mapped to their float originals, constants folded) and lowered as
litert-torch lowers it, checked operator by operator against its output for the tinyexp
architectures: convolutions run NHWC (1-D ones as 2-D, height 1) with TRANSPOSE/RESHAPE where
the layout changes, a PAD for padding TF's SAME cannot express, DEPTHWISE_CONV_2D for one
input channel; bias, BatchNorm and ReLU fold into the kernel; a transposed convolution is
``padding=0`` plus a SLICE (``tinyexp.deploy.rewrite``); LayerNorm is MEAN/RSQRT arithmetic,
attention rank-3 BATCH_MATMULs, torch's exact GELU one GELU. (Element types are set afterwards,
by :func:`tinyexp.measure.mcu.set_precision`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

_BYTES = {"f32": 4, "i32": 4, "f16": 2, "i16": 2, "i8": 1, "i64": 8}
# integer operator -> (its float original, positions of the data, weight and bias inputs)
_FLOAT_OF = {"QLinearConv": ("Conv", (0, 3, 8)), "ConvInteger": ("Conv", (0, 1)),
             "QGemm": ("Gemm", (0, 3, 6)), "QLinearMatMul": ("MatMul", (0, 3)),
             "MatMulInteger": ("MatMul", (0, 1)), "DynamicQuantizeMatMul": ("MatMul", (0, 1, 4)),
             "QLinearAdd": ("Add", (0, 3)), "QLinearMul": ("Mul", (0, 3)),
             "QLinearSoftmax": ("Softmax", (0,)), "QLinearSigmoid": ("Sigmoid", (0,)),
             "QLinearLeakyRelu": ("LeakyRelu", (0,)), "QLinearAveragePool": ("AveragePool", (0,)),
             "QLinearGlobalAveragePool": ("GlobalAveragePool", (0,))}
_PLUMBING = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "Identity",
             "Dropout"}
_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM", "Loop", "Scan"}
_LOWEST = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT8: -128,
           onnx.TensorProto.UINT16: 0, onnx.TensorProto.INT16: -32768}
_UNARY = {"Relu": "RELU", "Clip": "RELU6", "Sigmoid": "LOGISTIC", "Tanh": "TANH",
          "LeakyRelu": "LEAKY_RELU", "Gelu": "GELU", "Softmax": "SOFTMAX", "Sqrt": "SQRT",
          "Exp": "EXP", "Neg": "NEG", "Abs": "ABS"}
_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Pow": "POW"}


class Unsupported(ValueError):
    """A graph TFLite Micro cannot run (an LSTM) or that this lowering does not know."""


@dataclass
class Tensor:
    shape: tuple[int, ...]
    const: bool = False
    dtype: str = "f32"  # f32 f16 i64 i32 i16 i8
    channels: int = 0  # quantization parameters stored (a scale and a zero point each)


@dataclass
class Op:
    name: str  # the TFLite builtin operator
    ins: list[int]
    outs: list[int]
    float_only: bool = False  # stays float32 in an integer model (LayerNorm's arithmetic)


@dataclass
class Graph:
    """A lowered TFLite graph: tensors and operators in execution order."""

    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    _shared: dict = field(default_factory=dict)

    def tensor(self, shape, const: bool = False, dtype: str = "f32", key=None) -> int:
        """A new tensor; constants with the same ``key`` are one tensor, as the converter
        deduplicates them."""
        if key is not None and (key, dtype) in self._shared:
            return self._shared[(key, dtype)]
        self.tensors.append(Tensor(tuple(int(d) for d in shape), const, dtype))
        if key is not None:
            self._shared[(key, dtype)] = len(self.tensors) - 1
        return len(self.tensors) - 1

    def op(self, name: str, ins: list[int], shape, float_only: bool = False) -> int:
        """Append an operator with one new output of ``shape``; returns the output."""
        out = self.tensor(shape)
        self.ops.append(Op(name, ins, [out], float_only))
        return out

    def nbytes(self, t: int) -> int:
        tensor = self.tensors[t]
        return int(np.prod(tensor.shape, dtype=np.int64)) * _BYTES[tensor.dtype]


def artifact_mode(model: onnx.ModelProto) -> str:
    """The TFLite mode of an ONNX artifact: float32, int8, int16x8, fp16 or dynamic."""
    graph, ops = model.graph, {n.op_type for n in model.graph.node}
    if ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}:
        return "dynamic"
    if ops & {"QuantizeLinear", *_FLOAT_OF}:
        wide = {onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
        zero_points = {n.input[2] for n in graph.node
                       if n.op_type == "QuantizeLinear" and len(n.input) > 2}
        return "int16x8" if any(i.name in zero_points and i.data_type in wide
                                for i in graph.initializer) else "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer):
        return "fp16"
    return "float32"


def _float_nodes(graph: onnx.GraphProto) -> tuple[list[tuple], set[str], dict[str, str]]:
    """(op, inputs, outputs, attributes) of the float network, its constant tensors, and
    the tensors that are another under a new name (a dropped quantize, dequantize or cast)."""
    if recurrent := {n.op_type for n in graph.node} & _RECURRENT:
        raise Unsupported(f"{', '.join(sorted(recurrent))}: TFLite Micro cannot run this model")
    const, scales, alias, made, nodes = {i.name for i in graph.initializer}, set(), {}, {}, []
    integer: set[str] = set()  # quantized tensors (outputs of QuantizeLinear)
    lowest = {i.name for i in graph.initializer if i.data_type in _LOWEST and list(
        onnx.numpy_helper.to_array(i).ravel()) == [_LOWEST[i.data_type]]}
    for node in graph.node:
        ins = [alias.get(i, i) for i in node.input]
        if node.op_type in ("Constant", "Shape") or all(i in const for i in ins if i):
            const.update(node.output)  # folded: shapes are static
        elif (node.op_type == "QuantizeLinear" and len(ins) > 2 and ins[2] in lowest
              and made.get(ins[0]) in ("Conv", "ConvTranspose", "Gemm", "MatMul")):
            # ONNX Runtime's QDQ format drops a ReLU into the quantized range (zero point at
            # the type's minimum); TFLite keeps it where nothing can absorb it (after a slice)
            nodes.append(("Relu", ins[:1], node.output[:1], {}))
            made[node.output[0]] = "Relu"
        elif node.op_type in _PLUMBING or node.op_type == "Clip" and node.input[0] in integer:
            alias[node.output[0]] = ins[0]  # (Brevitas' QCDQ clips the integers: plumbing)
            scales.update(node.output[1:])
            if node.op_type in ("QuantizeLinear", "Clip"):
                integer.add(node.output[0])
        elif all(i in const or i in scales for i in ins if i):
            scales.update(node.output)  # dynamic quantization's scale arithmetic
        elif node.op_type == "Mul" and any(i in scales for i in ins):
            alias[node.output[0]] = next(i for i in ins if i not in scales)  # its rescale
        else:
            op, keep = _FLOAT_OF.get(node.op_type, (node.op_type, None))
            ins = [ins[k] for k in keep if k < len(ins)] if keep else ins
            nodes.append((op, [i for i in ins if i and i not in scales], list(node.output),
                          {a.name: helper.get_attribute_value(a) for a in node.attribute}))
            made.update(dict.fromkeys(node.output, op))
    return _fuse_gelu(nodes), const, alias


def _fuse_gelu(nodes: list[tuple]) -> list[tuple]:
    """x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5, torch's exact GELU, as one Gelu node."""
    users: dict[str, list] = {}
    for node in nodes:
        for i in node[1]:
            users.setdefault(i, []).append(node)
    producer = {o: node for node in nodes for o in node[2]}
    for erf in [n for n in nodes if n[0] == "Erf" and n[1][0] in producer]:
        chain, out = [producer[erf[1][0]], erf], erf[2][0]
        while len(chain) < 5 and len(users.get(out, [])) == 1:
            chain.append(users[out][0])
            out = chain[-1][2][0]
        if [n[0] for n in chain] != ["Div", "Erf", "Add", "Mul", "Mul"]:
            continue
        at = nodes.index(chain[0])
        rest = [n for n in nodes if all(n is not c for c in chain)]
        nodes = rest[:at] + [("Gelu", chain[0][1][:1], [out], {})] + rest[at:]
    return nodes


def lift(dims) -> list[int]:
    """Spatial dimensions as TFLite's 2-D kernels see them: a 1-D length gets height 1."""
    return [1] * (2 - len(dims)) + list(dims)


class _Lowering:
    """ONNX tensor names -> lowered tensors; convolutions leave NHWC results, which are put
    back in ONNX's NCHW layout only when something else reads them."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict, mode: str) -> None:
        self.g, self.mode, self.shape = Graph(), mode, dict(shapes)
        self.nodes, self.const, alias = _float_nodes(graph)
        self.outputs = [alias.get(o.name, o.name) for o in graph.output]
        self.users = dict.fromkeys(self.outputs, 1)
        self.to_fc: set[str] = set()  # inputs of FULLY_CONNECTED layers
        for op, ins, _, _ in self.nodes:
            for i in ins:
                self.users[i] = self.users.get(i, 0) + 1
            if op == "Gemm" or (op == "MatMul" and ins[1] in self.const):
                self.to_fc.add(ins[0])
        self.cf: dict[str, int] = {}  # in ONNX's layout
        self.hwc: dict[str, int] = {}  # in NHWC, as a convolution left it
        self.fusable: dict[str, set] = {}  # kernel outputs that can still absorb a bias / ReLU
        for i in graph.input:
            if i.name not in self.const:
                self.cf[i.name] = self.g.tensor(self.shape[i.name])
                self.g.inputs.append(self.cf[i.name])

    def k(self, values, dtype: str = "i32") -> int:  # a shape/permutation/index constant
        return self.g.tensor((len(values),), True, dtype, key=tuple(values))

    def w(self, shape) -> int:  # a weight
        return self.g.tensor(shape, True)

    def reshape(self, t: int, shape) -> int:
        return self.g.op("RESHAPE", [t, self.k(shape)], shape)

    def as_cf(self, name: str) -> int:
        if name not in self.cf:
            shape, t = self.shape[name], self.hwc[name]
            if len(shape) == 3:  # (N, 1, L, C) -> (N, C, 1, L) -> (N, C, L)
                t = self.g.op("TRANSPOSE", [t, self.k((0, 3, 1, 2))], (*shape[:2], 1, shape[2]))
                t = self.reshape(t, shape)
            else:
                t = self.g.op("TRANSPOSE", [t, self.k((0, 3, 1, 2))], shape)
            self.cf[name] = t
        return self.cf[name]

    def as_hwc(self, name: str) -> int:
        if name not in self.hwc:
            n, c, *space = self.shape[name]
            space, t = lift(space), self.as_cf(name)
            if c == 1:  # moving a size-1 axis is a reshape
                t = self.reshape(t, (n, *space, 1))
            else:
                if len(self.shape[name]) == 3:
                    t = self.reshape(t, (n, c, *space))
                t = self.g.op("TRANSPOSE", [t, self.k((0, 2, 3, 1))], (n, *space, c))
            self.hwc[name] = t
        return self.hwc[name]

    def alias(self, out: str, src: str, fusable: set | None = None) -> None:
        for table in (self.cf, self.hwc):
            if src in table:
                table[out] = table[src]
        self.fusable[out] = fusable or set()

    def can_fuse(self, name: str, what: str) -> bool:
        return what in self.fusable.get(name, ()) and self.users.get(name) == 1

    def conv(self, op: str, ins: list[str], out: str, at: dict) -> None:
        x, (n, ci, *space), w = self.as_hwc(ins[0]), self.shape[ins[0]], self.shape[ins[1]]
        kernel, strides = list(w[2:]), at.get("strides", [1] * len(w[2:]))
        pads = at.get("pads", [0] * 2 * len(kernel))
        if op == "ConvTranspose":  # exported as padding=0 + a slice (tinyexp.deploy.rewrite)
            co, extra = w[1] * at.get("group", 1), at.get("output_padding", [0] * len(kernel))
            full = [(i - 1) * s + k + max(0, e - p) for i, s, k, e, p in zip(
                space, strides, kernel, extra, pads[:len(space)], strict=True)]
            y = self.g.op("TRANSPOSE_CONV", [self.k((n, *lift(full), co)), self.w(
                (co, *lift(kernel), ci)), x, self.w((co,))], (n, *lift(full), co))
            self.hwc[out], self.fusable[out] = y, {"bias", "act"}
            if any(pads):
                self.shape[out + "~"], self.hwc[out + "~"] = (n, co, *full), self.hwc.pop(out)
                self.cf[out] = self.g.op("SLICE", [self.as_cf(out + "~"), self.k(
                    (0, 0, *pads[:len(space)])), self.k(self.shape[out])], self.shape[out])
                self.fusable[out] = set()
            return
        same = [max((o - 1) * s + k - i, 0) for i, o, s, k in zip(
            space, self.shape[out][2:], strides, kernel, strict=True)]  # TF's SAME, in total
        if any(pads) and pads != [t // 2 for t in same] + [t - t // 2 for t in same]:
            grown = [i + a + b for i, a, b in zip(
                space, pads[:len(space)], pads[len(space):], strict=True)]
            x = self.g.op("PAD", [x, self.k((0, 0, *pads, 0, 0))], (n, *lift(grown), ci))
        co, group = w[0], at.get("group", 1)
        depthwise = ci == 1 or group == ci > 1  # the converter's choice for one input channel
        y = self.g.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, self.w(
            (1, *lift(kernel), co) if depthwise else (co, *lift(kernel), w[1])),
            self.w((co,))], (n, *lift(self.shape[out][2:]), co))
        self.hwc[out], self.fusable[out] = y, {"bias", "act"}

    def layer_norm(self, x_name: str, out: str) -> None:
        x, shape = self.as_cf(x_name), self.shape[x_name]
        rows, col = (int(np.prod(shape[:-1])),), (*shape[:-1], 1)

        def op(name, args, result):
            t = self.g.tensor(result)
            self.g.ops.append(Op(name, args, [t], float_only=True))
            return t

        mean = op("MEAN", [x, self.k((0, 1))], rows)
        diff = op("SQUARED_DIFFERENCE", [x, op("RESHAPE", [mean, self.k(col)], col)], shape)
        var = op("ADD", [op("MEAN", [diff, self.k((0, 1))], rows), self.k((), "f32")], rows)
        inv = op("RSQRT", [var], rows)
        shift = op("SUB", [self.k((), "f32"), op("MUL", [mean, inv], rows)], rows)
        y = op("MUL", [x, op("RESHAPE", [inv, self.k(col)], col)], shape)
        y = op("ADD", [y, op("RESHAPE", [shift, self.k(col)], col)], shape)
        if self.mode in ("int8", "dynamic"):  # else folded into the next FULLY_CONNECTED
            y = op("ADD", [op("MUL", [y, self.w(shape[-1:])], shape), self.w(shape[-1:])], shape)
        self.cf[out] = y

    def node(self, op: str, ins: list[str], outs: list[str], at: dict) -> None:
        acts = [i for i in ins if i not in self.const]
        out, shape = outs[0], self.shape[outs[0]]
        if op in ("Conv", "ConvTranspose"):
            self.conv(op, ins, out, at)
        elif op in ("MaxPool", "AveragePool"):
            n, c, *space = shape
            self.hwc[out] = self.g.op("MAX_POOL_2D" if op == "MaxPool" else "AVERAGE_POOL_2D",
                                      [self.as_hwc(ins[0])], (n, *lift(space), c))
        elif op == "Gemm" or (op == "MatMul" and ins[1] in self.const):
            w = self.shape[ins[1]]  # FULLY_CONNECTED keeps (out, in) weights
            w = w if op == "Gemm" and at.get("transB") else w[::-1]
            self.cf[out] = self.g.op("FULLY_CONNECTED", [self.as_cf(ins[0]), self.w(w),
                                                         self.w(w[:1])], shape)
            self.fusable[out] = {"bias", "act"} if op == "MatMul" else {"act"}
        elif op == "MatMul":  # both operands computed: BATCH_MATMUL, rank 3
            a, b = (self.as_cf(i) for i in ins)
            if len(shape) > 3:
                a, b = (self.reshape(t, (int(np.prod(self.shape[i][:-2])), *self.shape[i][-2:]))
                        for t, i in zip((a, b), ins, strict=True))
            y = self.g.op("BATCH_MATMUL", [a, b], (int(np.prod(shape[:-2])), *shape[-2:]))
            self.cf[out] = self.reshape(y, shape) if len(shape) > 3 else y
        elif op in _BINARY and len(acts) == 1 and self.can_fuse(acts[0], "bias") and int(
                np.prod(self.shape[next(i for i in ins if i in self.const)])) <= self.shape[
                acts[0]][1 if acts[0] in self.hwc else -1]:
            self.alias(out, acts[0], {"act"})  # a bias or a BatchNorm, folded into the kernel
        elif op == "BatchNormalization":  # folded into the kernel before it, or MUL + ADD
            c = (self.shape[ins[0]][1],)
            if self.can_fuse(ins[0], "bias"):
                self.alias(out, ins[0], {"act"})
            else:
                self.cf[out] = self.g.op("ADD", [self.g.op("MUL", [self.as_cf(ins[0]), self.w(
                    c)], shape), self.w(c)], shape)
        elif op in ("Relu", "Clip") and self.can_fuse(acts[0], "act"):
            self.alias(out, acts[0])
        elif op in _UNARY:
            if acts[0] in self.cf or op == "Softmax":
                self.cf[out] = self.g.op(_UNARY[op], [self.as_cf(acts[0])], shape)
            else:  # element-wise: stays NHWC
                t = self.hwc[acts[0]]
                self.hwc[out] = self.g.op(_UNARY[op], [t], self.g.tensors[t].shape)
        elif op in _BINARY:
            self.cf[out] = self.g.op(_BINARY[op], [
                self.w(self.shape[i]) if i in self.const else self.as_cf(i) for i in ins], shape)
        elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            src = tuple(self.shape[ins[0]])
            # FULLY_CONNECTED folds leading axes itself: no RESHAPE next to it
            if src == tuple(shape) or src[-1:] == shape[-1:] and (
                    self.fusable.get(ins[0]) or out in self.to_fc and self.users[out] == 1):
                self.alias(out, ins[0], self.fusable.get(ins[0]))
            else:
                self.cf[out] = self.reshape(self.as_cf(ins[0]), shape)
        elif op == "Transpose":
            self.cf[out] = self.g.op("TRANSPOSE", [self.as_cf(ins[0]), self.k(
                at.get("perm", range(len(shape) - 1, -1, -1)))], shape)
        elif op in ("Split", "Slice", "Gather"):
            for o in outs:
                self.cf[o] = self.g.op("GATHER" if op == "Gather" else "SLICE", [
                    self.as_cf(ins[0]), self.k((0,) * len(shape)), self.k(self.shape[o])],
                    self.shape[o])
        elif op == "Concat":
            self.cf[out] = self.g.op("CONCATENATION", [self.as_cf(i) for i in acts], shape)
        elif op == "LayerNormalization":
            self.layer_norm(ins[0], out)
        elif op in ("ReduceMean", "GlobalAveragePool"):
            self.cf[out] = self.g.op("MEAN", [self.as_cf(ins[0]), self.k((1,))], shape)
        else:
            raise Unsupported(f"no TFLite lowering for the ONNX operator {op}")

    def lower(self) -> Graph:
        for node in self.nodes:
            self.node(*node)
        self.g.outputs = [self.as_cf(o) for o in self.outputs]
        return self.g


def lower(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], mode: str) -> Graph:
    """The float TFLite graph of an ONNX artifact; ``shapes`` of every tensor by name."""
    return _Lowering(model.graph, shapes, mode).lower()
