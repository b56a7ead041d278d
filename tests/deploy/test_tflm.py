"""inspect, tflm_predict and host_latency_ms on a converted file and on files that are not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tinyexp.deploy.export import DeployError


def test_inspect_reports_the_file_as_tflm_sees_it(classifier_int8):
    from tinyexp.deploy.tflm import inspect

    ins = inspect(classifier_int8.path)
    assert ins.flash_bytes == classifier_int8.path.stat().st_size
    assert ins.weight_bytes == classifier_int8.report["weight_bytes"]
    assert ins.op_names == sorted({name for name, _, _ in ins.ops})
    assert ins.ops[0][0] == "RESHAPE" and ins.ops[-1][0] == "FULLY_CONNECTED"  # graph order
    assert ins.input.shape == (1, 1, 8, 8) and ins.output.shape == (1, 10)
    assert ins.output.dtype == "int8" and ins.output.scale > 0
    assert ins.arena_head > 0 and ins.arena_tail > 0 and ins.float_ops == []
    assert dataclasses.asdict(ins)["input"]["dtype"] == "int8"


def test_the_reported_arena_is_the_smallest_that_works(classifier_int8):
    from tinyexp.deploy.tflm import inspect, tflm_predict

    ins = inspect(classifier_int8.path)
    x = classifier_int8.inputs[:3]
    assert tflm_predict(classifier_int8.path, ins.arena_bytes)(x).shape == (3, 10)
    with pytest.raises(DeployError, match="cannot load it"):
        tflm_predict(classifier_int8.path, ins.arena_bytes - 16)


def test_predictor_keeps_one_interpreter(classifier_int8):
    from tinyexp.deploy.tflm import tflm_predict

    predict = tflm_predict(classifier_int8.path, 1 << 16)
    first = predict(classifier_int8.inputs[:4])
    interpreter = predict.interpreter
    assert np.array_equal(predict(classifier_int8.inputs[:4]), first)
    assert predict.interpreter is interpreter
    assert first.dtype == np.float32
    with pytest.raises(ValueError, match="do not fit"):
        predict(np.zeros((1, 3, 3), np.float32))


def test_host_latency(classifier_int8, tmp_path):
    from tinyexp.deploy.tflm import host_latency_ms

    latency = host_latency_ms(classifier_int8.path, classifier_int8.inputs[:1], warmup=3, runs=20)
    assert set(latency) == {"latency_ms", "latency_p90_ms", "latency_lock_wait_s",
                            "latency_exclusive", "latency_threads", "latency_load_1m"}
    assert 0 < latency["latency_ms"] <= latency["latency_p90_ms"] < 1000
    assert latency["latency_exclusive"] == 0.0  # no lock given: timed side by side
    locked = host_latency_ms(classifier_int8.path, classifier_int8.inputs[:1], warmup=1, runs=5,
                             lock=str(tmp_path / "latency.lock"))
    assert locked["latency_exclusive"] == 1.0 and locked["latency_threads"] == 1.0


@pytest.mark.parametrize("content", [b"not a model at all", b"\x00" * 64,
                                     b"\x10\x00\x00\x00TFL3" + b"\xff" * 8])
def test_not_a_tflite_model(tmp_path, content):
    from tinyexp.deploy.tflm import host_latency_ms, inspect, tflm_predict

    path = tmp_path / "x.tflite"
    path.write_bytes(content)
    for call in (lambda: inspect(path), lambda: tflm_predict(path, 1024),
                 lambda: host_latency_ms(path, np.zeros(1), 1, 1)):
        with pytest.raises(DeployError, match=r"x\.tflite: not a TFLite model") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(DeployError, match="no such file"):
        inspect(tmp_path / "missing.tflite")
