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
    """Export ``net`` to ONNX with a dynamic batch axis; the file appears whole or not at all."""
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
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    # The only symbolic dimension of our exports is the batch: count MACs for batch 1.
    return [d.dim_value if d.HasField("dim_value") else 1
            for d in value_info.type.tensor_type.shape.dim]


def count_macs(path: Path) -> int:
    """Multiply-accumulates of one batch-1 inference, read off the ONNX graph.

    Counts Conv, ConvTranspose, Gemm, MatMul (attention's QK^T and AV included) and LSTM; element-
    wise ops, normalization and activations are not counted. FLOPs are about 2 x MACs.
    """
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {vi.name: _dims(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    shapes.update({init.name: list(init.dims) for init in graph.initializer})
    macs = 0
    for node in graph.node:
        op, ins, outs = node.op_type, node.input, node.output
        if op == "Conv":
            weight, out = shapes[ins[1]], shapes[outs[0]]
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif op == "ConvTranspose":
            x, weight = shapes[ins[0]], shapes[ins[1]]
            macs += int(np.prod(x)) * int(np.prod(weight[1:]))
        elif op in ("MatMul", "Gemm"):
            a, out = shapes[ins[0]], shapes[outs[0]]
            trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
            inner = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            macs += int(np.prod(out)) * inner
        elif op == "LSTM":
            x, weight, recur = shapes[ins[0]], shapes[ins[1]], shapes[ins[2]]
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
