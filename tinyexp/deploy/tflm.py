"""What a TFLite file costs on a microcontroller, measured with TensorFlow Lite Micro itself.

:func:`inspect` reads the flatbuffer (operators in graph order with their tensor types, the
input/output quantization, constant bytes) and asks TFLite Micro, in a child process, whether
it can allocate and invoke the model and how large its arena is. The arena has two ends:

* head: the non-persistent activations, planned by TFLM's greedy memory planner;
* tail: persistent data (quantization parameters, operator data, node structures), often
  10-80% of the head in a small model, so activation-only estimates undercount RAM.

The child process is needed because TFLM reports its arena only by ``print_allocations()``,
C code writing to the process's stderr, and because a model TFLM chokes on may take the
process down with it. Figures are for the x86-64 build: pointer-sized tail structures are
smaller on a 32-bit MCU, so the tail measured here is an upper bound.

:func:`tflm_predict` runs a model sample by sample in an interpreter kept alive in this
process; :func:`host_latency_ms` times the full TFLite runtime on the host.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyexp.deploy import _tflite
from tinyexp.deploy._capture import Captured, capture_stderr, one_line
from tinyexp.deploy._tflite import TensorInfo
from tinyexp.deploy.export import DeployError
from tinyexp.measure.latency_lock import exclusive

PROBE_ARENA = 8 << 20  # generous first allocation; the arena actually used is read back
PROBE_TIMEOUT = 300  # seconds; an unrolled LSTM takes TFLM a few seconds to prepare

# Runs in the child: load, invoke on zeros, read the arena from print_allocations(), then
# find the smallest arena_size that still allocates and invokes (it can exceed TFLM's total).
_PROBE = r"""
import json, os, re, sys, tempfile
import numpy as np
from tflite_micro.python.tflite_micro import runtime

path, arena, n_inputs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def run(size):
    it = runtime.Interpreter.from_file(path, arena_size=size)
    for i in range(n_inputs):
        d = it.get_input_details(i)
        it.set_input(np.zeros(d["shape"], d["dtype"]), i)
    it.invoke()
    return it

out = {"loads": False, "error": None}
try:
    it = run(arena)
    out["loads"] = True
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            it.print_allocations()
        finally:
            os.dup2(saved, 2)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    for key in ("total", "head", "tail"):
        m = re.search(r"Arena allocation %s (\d+) bytes" % key, text)
        out[key] = int(m.group(1)) if m else None
    if out["total"]:
        def works(size):
            # in a forked child: below the arena it needs, TFLM may crash (it dereferences a
            # failed temp allocation) instead of raising, which would take the probe down
            pid = os.fork()
            if pid == 0:
                try:
                    run(size)
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            return os.waitpid(pid, 0)[1] == 0
        # TFLM's total is not always enough (scratch buffers during Prepare, arena alignment):
        # grow the slack until it works, then bisect in 16-byte steps.
        lo, slack = -(-out["total"] // 16) * 16 - 16, 16
        while lo + slack < arena and not works(lo + slack):
            lo, slack = lo + slack, slack * 2
        hi = min(lo + slack, arena)
        while hi - lo > 16:
            mid = (lo + hi) // 32 * 16
            lo, hi = (lo, mid) if works(mid) else (mid, hi)
        out["minimal"] = hi
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print("PROBE-RESULT " + json.dumps(out))
"""


@dataclass
class Inspection:
    """A TFLite file as TFLite Micro sees it (see the module docstring for the arena)."""

    path: str
    flash_bytes: int
    weight_bytes: int
    ops: list[tuple[str, tuple[str, ...], tuple[str, ...]]]
    op_names: list[str]
    input: TensorInfo
    output: TensorInfo
    loads: bool
    error: str | None
    arena_head: int | None
    arena_tail: int | None
    arena_bytes: int | None  # smallest arena_size that allocated and invoked
    arena_reported: int | None = None  # TFLM's own total (head + tail); can be below the above
    float_ops: list[str] = field(default_factory=list)


def read_model(path: str | os.PathLike) -> tuple[bytes, Any]:
    """The bytes and parsed model of a TFLite file, or a one-line DeployError."""
    p = Path(path)
    if not p.is_file():
        raise DeployError(f"{path}: no such file")
    data = p.read_bytes()
    if not _tflite.is_tflite(data):
        raise DeployError(f"{path}: not a TFLite model (no TFL3 file identifier)")
    try:
        model = _tflite.load(data)
        if not model.subgraphs or not len(model.subgraphs[0].inputs):
            raise ValueError("no subgraph with inputs")
    except ModuleNotFoundError as e:
        raise DeployError(f"reading {path} needs the deploy extra (pip install -e "
                          f"\".[deploy]\"): {e}") from e
    except Exception as e:  # a truncated or foreign flatbuffer
        raise DeployError(f"{path}: not a TFLite model ({type(e).__name__}: {e})") from e
    return data, model


def inspect(path: str | os.PathLike, *, arena_size: int = PROBE_ARENA) -> Inspection:
    """Operators, sizes, quantization and TFLite Micro's arena for a ``.tflite`` file.

    Raises:
        DeployError: the file is missing or not a TFLite model. A model TFLite Micro cannot
            load is not an error here: ``loads`` is False and ``error`` says why.
    """
    data, model = read_model(path)
    sg = model.subgraphs[0]
    graph_ops = _tflite.ops(model)
    result = probe(path, arena_size=arena_size, n_inputs=len(sg.inputs))
    return Inspection(
        path=str(path),
        flash_bytes=len(data),
        weight_bytes=_tflite.weight_bytes(model),
        ops=graph_ops,
        op_names=sorted({name for name, _, _ in graph_ops}),
        input=_tflite.tensor_info(sg.tensors[sg.inputs[0]]),
        output=_tflite.tensor_info(sg.tensors[sg.outputs[0]]),
        loads=result["loads"],
        error=result["error"],
        arena_head=result.get("head"),
        arena_tail=result.get("tail"),
        arena_bytes=result.get("minimal") or result.get("total"),
        arena_reported=result.get("total"),
        float_ops=_tflite.float_ops(model),
    )


def probe(path: str | os.PathLike, *, arena_size: int = PROBE_ARENA,
          n_inputs: int = 1) -> dict[str, Any]:
    """Load and invoke ``path`` in TFLite Micro in a child process.

    Returns:
        ``loads``, ``error`` (one line or None) and, when it loads, ``total``, ``head``,
        ``tail`` (as TFLM reports them) and ``minimal`` (smallest working arena_size).
    """
    cmd = [sys.executable, "-c", _PROBE, str(path), str(arena_size), str(n_inputs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              errors="replace")
    except subprocess.TimeoutExpired:
        return {"loads": False, "error": f"TFLite Micro did not finish in {PROBE_TIMEOUT} s"}
    found = re.search(r"^PROBE-RESULT (.*)$", proc.stdout, re.M)
    captured = Captured()
    captured.text = proc.stderr
    if found is None:  # the child died: a crash inside TFLM, or tflite-micro missing
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"loads": False, "error": f"TFLite Micro crashed ({how}): "
                                          f"{captured.reason(fallback='no message')}"}
    result = json.loads(found.group(1))
    if not result["loads"]:
        result["error"] = captured.reason(fallback=result["error"] or "unknown error")
    return result


def _quantizer(details: dict[str, Any]) -> tuple[np.dtype, float, int]:
    q = details.get("quantization_parameters") or {}
    scales, zeros = q.get("scales", []), q.get("zero_points", [])
    scale = float(scales[0]) if len(scales) else 0.0
    return np.dtype(details["dtype"]), scale, int(zeros[0]) if len(zeros) else 0


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float to the tensor's type; float tensors pass through (as float32)."""
    if dtype.kind == "f" or not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """The tensor's type back to float32."""
    if dtype.kind == "f" or not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflm_predict(path: str | os.PathLike,
                 arena_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A float32-in, float32-out predictor running ``path`` in TFLite Micro, one sample a call.

    Integer inputs are quantized with the input's scale and zero point, integer outputs
    dequantized with the output's. The interpreter lives as long as the returned function.

    Raises:
        DeployError: TFLite Micro cannot load the model (or fails to invoke it later).
    """
    read_model(path)
    from tflite_micro.python.tflite_micro import runtime

    failure = None
    with capture_stderr() as captured:
        try:
            interp = runtime.Interpreter.from_file(str(path), arena_size=int(arena_size))
        except Exception as e:
            failure = e
    if failure is not None:
        raise DeployError(f"{path}: TFLite Micro cannot load it: "
                          f"{captured.reason(fallback=str(failure))}") from failure
    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    in_shape, out_shape = tuple(inp["shape"]), tuple(out["shape"])
    in_q, out_q = _quantizer(inp), _quantizer(out)

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x[0].size != int(np.prod(in_shape)):
            raise ValueError(f"samples of shape {x.shape[1:]} do not fit input {in_shape}")
        ys = []
        for sample in x:
            interp.set_input(quantize(sample.reshape(in_shape), *in_q), 0)
            try:
                interp.invoke()
            except RuntimeError as e:
                raise DeployError(f"{path}: TFLite Micro invoke failed: {one_line(e)}") from e
            ys.append(dequantize(interp.get_output(0), *out_q).reshape(out_shape[1:]))
        return np.stack(ys)

    predict.interpreter = interp  # keep it reachable for debugging
    return predict


def host_latency_ms(path: str | os.PathLike, example: Any, warmup: int = 10,
                    runs: int = 100, lock: str | None = None) -> dict[str, float]:
    """Median and 90th-percentile time of one ``invoke()`` in the full TFLite runtime.

    One thread, the runtime's default delegate (XNNPACK for float operators). ``example`` is
    one float input (a tensor or array of the input's shape); integer inputs are quantized.
    Warm-up and timed runs hold the host-wide ``lock`` (``measure.latency_lock``) and the
    result says how they were timed, as :func:`tinyexp.measure.cost.latency_ms` does.

    Raises:
        DeployError: the runtime cannot load or run the file.
    """
    read_model(path)
    from ai_edge_litert.interpreter import Interpreter

    failure = None
    with capture_stderr() as captured:  # XNNPACK announces itself on stderr
        try:
            interp = Interpreter(model_path=str(path), num_threads=1)
            interp.allocate_tensors()
            d = interp.get_input_details()[0]
            x = example.detach().cpu().numpy() if hasattr(example, "detach") else example
            q = d["quantization"]
            x = quantize(np.asarray(x, np.float32).reshape(d["shape"]), np.dtype(d["dtype"]),
                         float(q[0]), int(q[1]))
            interp.set_tensor(d["index"], x)
            with exclusive(lock) as record:
                record.update(latency_threads=1.0, latency_load_1m=os.getloadavg()[0])
                for _ in range(warmup):
                    interp.invoke()
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    interp.invoke()
                    times.append((time.perf_counter() - start) * 1e3)
        except Exception as e:
            failure = e
    if failure is not None:
        raise DeployError(f"{path}: the TFLite runtime cannot run it: "
                          f"{captured.reason(fallback=str(failure))}") from failure
    return {"latency_ms": statistics.median(times),
            "latency_p90_ms": float(np.percentile(times, 90)), **record}
