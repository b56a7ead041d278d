"""Slimming the flatbuffer keeps TFLite Micro's results bit-identical and the weights aligned."""

from __future__ import annotations

import numpy as np
import pytest

from tinyexp.deploy import _tflite


@pytest.fixture(scope="module")
def raw_and_slim(export, classifier, digits, tmp_path_factory):
    train_x, _, test_x, _ = digits
    raw = export("classifier_int8_raw", classifier, train_x[:256], test_x, "int8", strip=False)
    data = raw.path.read_bytes()
    slim = tmp_path_factory.mktemp("slim") / "slim.tflite"
    slim.write_bytes(_tflite.strip(data))
    return raw, slim


def test_strip_drops_names_signatures_and_metadata(raw_and_slim):
    raw, slim = raw_and_slim
    before, after = _tflite.load(raw.path.read_bytes()), _tflite.load(slim.read_bytes())
    assert before.signatureDefs and any(t.name for t in before.subgraphs[0].tensors)
    assert after.signatureDefs is None and after.description is None
    assert all(t.name is None for t in after.subgraphs[0].tensors)
    assert not after.metadata  # min_runtime_version, keep_stablehlo_constant
    # activations share the empty sentinel buffer 0; only constants keep a buffer
    assert all(b.data is not None for b in after.buffers[1:])
    assert _tflite.ops(after) == _tflite.ops(before)
    assert _tflite.weight_bytes(after) == _tflite.weight_bytes(before)
    assert slim.stat().st_size < 0.8 * raw.path.stat().st_size


def test_buffers_are_16_byte_aligned(raw_and_slim):
    _, slim = raw_and_slim
    data = slim.read_bytes()
    root = _tflite.schema().Model.GetRootAs(data, 0)
    starts = []
    for i in range(root.BuffersLength()):
        b = root.Buffers(i)
        if b.DataLength():
            starts.append(b._tab.Vector(b._tab.Offset(4)))  # where the bytes begin
    assert starts and all(s % 16 == 0 for s in starts)


def test_tflm_and_host_outputs_are_identical_after_stripping(raw_and_slim):
    from ai_edge_litert.interpreter import Interpreter

    from tinyexp.deploy.tflm import tflm_predict

    raw, slim = raw_and_slim
    x = raw.inputs[:20]
    assert np.array_equal(tflm_predict(raw.path, 1 << 16)(x), tflm_predict(slim, 1 << 16)(x))
    outs = []
    for path in (raw.path, slim):
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        d = interp.get_input_details()[0]
        interp.set_tensor(d["index"], np.full(d["shape"], 3, np.int8))
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    assert np.array_equal(*outs)


def test_is_tflite():
    assert not _tflite.is_tflite(b"hello world")
    assert not _tflite.is_tflite(b"")
