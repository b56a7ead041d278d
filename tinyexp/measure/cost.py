"""Cost of a model as deployed: parameters, MACs, file size and latency of its ONNX artifact.

Every figure comes from the exported file or from timing it in ONNX Runtime, so float, pruned
and quantized stages are measured the same way. MACs have one definition, :func:`onnx_macs` on
the graph; a network in PyTorch is counted through its export (:func:`net_macs`), so a figure
computed before deployment (the per-layer sensitivity analysis) matches the artifact's. Flash
and RAM are those of the microcontroller deployment, TFLite Micro, estimated from the same
file (:mod:`tinyexp.measure.mcu`).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from tinyexp.files import atomic_write
from tinyexp.measure.latency_lock import DEFAULT_LATENCY_LOCK, exclusive

log = logging.getLogger(__name__)

def count_params(net: nn.Module) -> int:
    """Number of parameters (weights and biases) of a network."""
    return sum(p.numel() for p in net.parameters())


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int,
                compact: bool = True) -> Path:
    """Export ``net`` to ONNX for batch-1 inference; the file appears whole or not at all.

    Shapes are static, as a microcontroller runtime wants them. ``compact`` shortens the names
    (see ``compact_onnx``); keep them for a file that goes on to ONNX Runtime's quantizer,
    which trips over some renamed transformer graphs. ``net`` is exported in eval mode and its
    train/eval mode restored afterwards.
    """

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: fast, and its graphs are what ONNX Runtime's quantization
            # tools expect (the dynamo exporter works too but takes seconds per model).
            torch.onnx.export(
                net, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
            )
        if compact:
            compact_onnx(tmp)

    was_training = net.training
    net.eval()
    try:
        return atomic_write(path, write)
    finally:
        net.train(was_training)


def compact_onnx(path: Path) -> Path:
    """Rename every node and internal tensor to a short id and drop shape annotations.

    Exporters and quantizers name tensors after module paths ("/encoder/encoder.0/Conv_output_0
    _QuantizeLinear_Output"); in a small model those strings can outweigh the weights. A
    deployed file needs none of them, and every stage gets the same treatment, so sizes compare
    fairly. Graph inputs and outputs keep their names.
    """
    model = onnx.load(str(path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for a in node.attribute):
        return path  # control flow with subgraphs: leave it as exported
    keep = {v.name for v in [*graph.input, *graph.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names):x}")

    for init in graph.initializer:
        init.name = short(init.name)
    for index, node in enumerate(graph.node):
        node.name = f"n{index:x}"  # unique: ONNX Runtime's quantizer keys its tables by node name
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    del model.metadata_props[:]
    model.doc_string = graph.doc_string = ""
    # Quantizers declare every operator domain they know; keep the ones the graph uses.
    used = {node.domain for node in graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))


@contextmanager
def ort_optimized(path: Path) -> Iterator[Path]:
    """A temporary copy of the graph as ONNX Runtime will execute it on the CPU.

    QDQ pairs are fused into integer kernels and constants folded (extended optimizations),
    without hardware-specific layout changes. The file lives until the ``with`` block ends.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        yield out


def _run_every_tensor(path: Path) -> dict[str, np.ndarray]:
    """Every intermediate tensor of one batch-1 run (on zeros) in ONNX Runtime, by name.

    Static inference loses track of shapes the exporter computes at run time (an LSTM's
    initial states, ``repeat``); running the graph once is exact for any graph, and gives the
    element type each tensor really has at the deployed precision.
    """
    import onnxruntime as ort

    model = onnx.load(str(path))
    listed = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in listed:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feed[inp.name] = np.zeros(shape, dtype=np.float32)
    outputs = session.run(None, feed)
    tensors = dict(zip((o.name for o in session.get_outputs()), outputs, strict=True))
    tensors.update(feed)
    return tensors


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    shapes = {init.name: list(init.dims) for init in onnx.load(str(path)).graph.initializer}
    shapes.update({name: list(np.shape(v)) for name, v in _run_every_tensor(path).items()})
    return shapes


def peak_activation_bytes(path: Path) -> int:
    """RAM for the activations of one batch-1 inference at the deployed precision.

    Walks the nodes in the graph's execution order; a tensor is live from the node that
    produces it (the input: from the start) to the last node that reads it (graph outputs: to
    the end). The peak is the largest sum of live tensors, counted while a node runs (its
    inputs and outputs together). Weights and constants are flash, not RAM; no tensor shares
    memory with another (an in-place ReLU would need less), so this is an upper bound for a
    runtime that plans memory this way. It is read off the graph ONNX Runtime executes, so a
    QDQ model's activations count at their integer width.
    """
    with ort_optimized(path) as optimized:
        graph = onnx.load(str(optimized)).graph
        tensors = _run_every_tensor(optimized)
    stored = {init.name for init in graph.initializer}
    for node in graph.node:  # constants, and whatever is computed from constants alone
        if node.op_type == "Constant" or all(i in stored for i in node.input if i):
            stored.update(node.output)
    size = {name: int(np.asarray(v).nbytes) for name, v in tensors.items() if name not in stored}
    last_use = {name: len(graph.node) for name in (o.name for o in graph.output)}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name in size and last_use.get(name, -1) < len(graph.node):
                last_use[name] = max(last_use.get(name, -1), index)
    live = {i.name for i in graph.input if i.name in size}
    peak = sum(size[n] for n in live)
    for index, node in enumerate(graph.node):
        live |= {n for n in node.output if n in size}
        peak = max(peak, sum(size[n] for n in live))
        live = {n for n in live if last_use.get(n, -1) > index}
    return peak


# op -> (kind, index of the data input, index of the weight input). Integer kernels from
# quantization count like their float originals: quantization changes precision, not work.
_MAC_OPS = {
    "Conv": ("conv", 0, 1), "ConvInteger": ("conv", 0, 1), "QLinearConv": ("conv", 0, 3),
    "ConvTranspose": ("convT", 0, 1),
    "MatMul": ("matmul", 0, 1), "Gemm": ("matmul", 0, 1), "MatMulInteger": ("matmul", 0, 1),
    "QLinearMatMul": ("matmul", 0, 3), "QGemm": ("matmul", 0, 3),
    "DynamicQuantizeMatMul": ("matmul", 0, 1),
    "MatMulIntegerToFloat": ("matmul", 0, 1),
    "LSTM": ("lstm", 0, 1), "DynamicQuantizeLSTM": ("lstm", 0, 1),
}


def onnx_macs(path: Path) -> int:
    """Multiply-accumulates of one batch-1 inference, read off the ONNX graph.

    Counts Conv, ConvTranspose, Gemm, MatMul (attention's QK^T and AV included) and LSTM, and
    the integer kernels quantization puts in their place; element-wise ops, normalization and
    activations are not counted. FLOPs are about 2 x MACs.
    """
    graph = onnx.load(str(path)).graph
    known = _tensor_shapes(path)
    macs = 0
    for node in graph.node:
        op, ins, outs = node.op_type, list(node.input), node.output
        if op not in _MAC_OPS:
            continue

        def shape(name: str, node: onnx.NodeProto = node) -> list[int]:
            if known.get(name) is None:  # never count an unknown shape as zero
                raise ValueError(f"onnx_macs: no shape for {name!r} (input of {node.op_type} "
                                 f"{node.name!r})")
            return known[name]

        kind, x_at, w_at = _MAC_OPS[op]
        if kind == "conv":  # output elements x (input channels per group x kernel)
            macs += int(np.prod(shape(outs[0]))) * int(np.prod(shape(ins[w_at])[1:]))
        elif kind == "convT":  # input elements x (output channels per group x kernel)
            macs += int(np.prod(shape(ins[x_at]))) * int(np.prod(shape(ins[w_at])[1:]))
        elif kind == "matmul":
            a = shape(ins[x_at])
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            macs += int(np.prod(shape(outs[0]))) * (a[-2] if trans_a else a[-1])
        else:  # LSTM: every step, 4 gates x hidden units x (inputs + hidden)
            steps, batch, inputs = shape(ins[0])
            hidden = shape(ins[2])[-1] if op == "LSTM" else shape(ins[2])[1]
            directions = shape(ins[1])[0]
            macs += directions * steps * batch * 4 * hidden * (inputs + hidden)
    return macs


def net_macs(net: nn.Module, example: torch.Tensor, opset: int) -> int:
    """MACs of one batch-1 inference of ``net``: :func:`onnx_macs` of its ONNX export.

    The export is the one the pipeline measures (:func:`export_onnx` at ``opset``), made in a
    temporary folder; ``net`` and its train/eval mode are left as they were.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return onnx_macs(export_onnx(net, example[:1], Path(tmp) / "net.onnx", opset=opset))


def ort_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session; one thread by default, as on a single-core MCU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# Intra-op threads of the timing session: one, as on a single-core microcontroller.
LATENCY_THREADS = 1


def latency_ms(path: Path, example: np.ndarray, *, warmup: int, runs: int,
               lock: str | None = DEFAULT_LATENCY_LOCK) -> dict:
    """Median and 90th percentile of batch-1, single-thread inference time in ONNX Runtime.

    ``warmup`` untimed runs first, then ``runs`` timed ones (``measure.latency_*`` in the config),
    all under the host-wide ``lock`` (``measure.latency_lock``; None: none): no other job times
    meanwhile. With the times come how they were taken: ``latency_lock_wait_s``,
    ``latency_exclusive`` (:func:`tinyexp.measure.latency_lock.exclusive`),
    ``latency_threads`` (the session's intra-op threads) and ``latency_load_1m`` (the host's
    1-minute load average when timing began: what else was running, training included).
    """
    session = ort_session(path, LATENCY_THREADS)
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(example[:1], dtype=np.float32)}
    with exclusive(lock) as record:
        record.update(latency_threads=float(LATENCY_THREADS),
                      latency_load_1m=os.getloadavg()[0])
        for _ in range(warmup):
            session.run(None, feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1e3)
    return {
        "latency_ms": statistics.median(times),
        "latency_p90_ms": float(np.percentile(times, 90)),
        **record,
    }


def artifact_cost(path: Path, example: np.ndarray, *, warmup: int, runs: int,
                  lock: str | None = DEFAULT_LATENCY_LOCK) -> dict:
    """MACs, file size, memory and latency of an ONNX artifact.

    ``size_bytes`` is the ONNX file. ``flash_bytes`` and ``ram_bytes`` are what the artifact
    would take on a microcontroller under TFLite Micro, at its precision: the stripped
    ``.tflite`` flatbuffer and the tensor arena (:func:`tinyexp.measure.mcu.estimate`), whose
    planned activations are ``activation_bytes``. A graph TFLite Micro cannot run (an LSTM)
    keeps the ONNX figures: the file, and :func:`peak_activation_bytes` for both RAM keys.
    ``warmup``, ``runs`` and ``lock`` go to ``latency_ms``.
    """
    from tinyexp.measure.mcu import Unsupported, estimate

    size = Path(path).stat().st_size
    try:
        mcu = estimate(path)
        memory = {"flash_bytes": mcu.flash_bytes, "ram_bytes": mcu.arena_bytes,
                  "activation_bytes": mcu.head_bytes}
    except Unsupported as err:
        log.warning("%s: no TFLite Micro estimate (%s); flash_bytes and ram_bytes are the ONNX "
                    "file and its peak activations", Path(path).name, err)
        peak = peak_activation_bytes(path)
        memory = {"flash_bytes": size, "ram_bytes": peak, "activation_bytes": peak}
    return {
        "macs": onnx_macs(path),
        "size_bytes": size,
        **memory,
        **latency_ms(path, example, warmup=warmup, runs=runs, lock=lock),
    }
