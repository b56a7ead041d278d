"""Cost of a model as deployed: parameters, MACs, file size and latency of its ONNX artifact.

Every figure comes from the exported file or from timing it in ONNX Runtime, so float, pruned
and quantized stages are measured the same way.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn


def count_params(net: nn.Module) -> int:
    """Number of parameters (weights and biases) of a network."""
    return sum(p.numel() for p in net.parameters())


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """Export ``net`` to ONNX for batch-1 inference; the file appears whole or not at all.

    Shapes are static, as a microcontroller runtime wants them, which also lets every tensor
    shape in the graph be inferred (MAC counting needs them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    net = net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: fast, and its graphs are what ONNX Runtime's quantization
            # tools expect (the dynamo exporter works too but takes seconds per model).
            torch.onnx.export(
                net, (example,), tmp, dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Shape of every tensor of the graph, from one batch-1 run in ONNX Runtime.

    Static inference loses track of shapes the exporter computes at run time (an LSTM's
    initial states, ``repeat``); running the graph once on zeros is exact for any graph.
    """
    import onnxruntime as ort

    model = onnx.load(str(path))
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
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
    shapes.update({o.name: list(v.shape) for o, v in zip(session.get_outputs(), outputs,
                                                          strict=True)})
    shapes.update({name: list(value.shape) for name, value in feed.items()})
    return shapes


def count_macs(path: Path) -> int:
    """Multiply-accumulates of one batch-1 inference, read off the ONNX graph.

    Counts Conv, ConvTranspose, Gemm, MatMul (attention's QK^T and AV included) and LSTM; element-
    wise ops, normalization and activations are not counted. FLOPs are about 2 x MACs.
    """
    graph = onnx.load(str(path)).graph
    known = _tensor_shapes(path)
    macs = 0
    for node in graph.node:
        op, ins, outs = node.op_type, node.input, node.output
        if op not in ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM"):
            continue

        def shape(name: str, node: onnx.NodeProto = node) -> list[int]:
            if known.get(name) is None:  # never count an unknown shape as zero
                raise ValueError(f"count_macs: no shape for {name!r} (input of {node.op_type} "
                                 f"{node.name!r})")
            return known[name]

        if op == "Conv":
            weight, out = shape(ins[1]), shape(outs[0])
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif op == "ConvTranspose":
            x, weight = shape(ins[0]), shape(ins[1])
            macs += int(np.prod(x)) * int(np.prod(weight[1:]))
        elif op in ("MatMul", "Gemm"):
            a, out = shape(ins[0]), shape(outs[0])
            trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
            inner = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            macs += int(np.prod(out)) * inner
        elif op == "LSTM":
            x, weight, recur = shape(ins[0]), shape(ins[1]), shape(ins[2])
            directions, gates, inputs = weight
            hidden = recur[-1]
            steps, batch = x[0], x[1]
            macs += directions * steps * batch * gates * (inputs + hidden)
    return macs


def ort_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session; one thread by default, as on a single-core MCU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ms(path: Path, example: np.ndarray, warmup: int = 20, runs: int = 200) -> dict:
    """Median and 90th percentile of batch-1, single-thread inference time in ONNX Runtime."""
    session = ort_session(path)
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(example[:1], dtype=np.float32)}
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
    }


def artifact_cost(path: Path, example: np.ndarray, warmup: int = 20, runs: int = 200) -> dict:
    """MACs, file size and latency of an ONNX artifact."""
    return {
        "macs": count_macs(path),
        "size_bytes": Path(path).stat().st_size,
        **latency_ms(path, example, warmup, runs),
    }
