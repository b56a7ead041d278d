"""export_tflite: each mode gives what it promises or a one-line DeployError, never another mode."""

from __future__ import annotations

import numpy as np
import pytest

from tinyexp.deploy.export import MODES, DeployError


def test_int8_classifier_is_full_integer_and_agrees_with_torch(classifier_int8, rel_rmse):
    from tinyexp.deploy.tflm import inspect, tflm_predict

    r = classifier_int8.report
    assert (r["input_dtype"], r["output_dtype"]) == ("int8", "int8")
    assert r["float_ops"] == [] and r["rewrites"] == []
    assert r["flash_bytes"] == classifier_int8.path.stat().st_size
    assert 0 < r["weight_bytes"] < r["flash_bytes"] < r["unstripped_bytes"]
    ins = inspect(classifier_int8.path)
    assert ins.loads and ins.error is None
    assert ins.arena_head > 0 and ins.arena_tail > 0
    assert ins.arena_bytes >= ins.arena_reported == ins.arena_head + ins.arena_tail
    assert {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"} <= set(ins.op_names)
    # per-channel int8 weights feeding int8 convolutions, int32 biases
    assert ("CONV_2D", ("int8", "int8", "int32"), ("int8",)) in ins.ops
    y = tflm_predict(classifier_int8.path, ins.arena_bytes)(classifier_int8.inputs)
    agree = np.mean(y.argmax(1) == classifier_int8.reference.argmax(1))
    assert agree >= 0.97, agree
    assert np.mean(y.argmax(1) == classifier_int8.labels) >= 0.8
    assert rel_rmse(y, classifier_int8.reference) < 0.05


def test_int8_autoencoder_rewrites_transposed_convs(autoencoder_int8, rel_rmse):
    from tinyexp.deploy.tflm import inspect, tflm_predict

    r = autoencoder_int8.report
    assert len(r["rewrites"]) == 2 and all("slice" in w for w in r["rewrites"])
    assert (r["input_dtype"], r["output_dtype"]) == ("int8", "int8")
    # PT2E has no transposed-convolution pattern: that island stays float, and says so
    assert "TRANSPOSE_CONV" in r["float_ops"]
    ins = inspect(autoencoder_int8.path)
    assert ins.loads, ins.error
    assert ins.arena_head > 0 and ins.arena_tail > 0
    assert ins.input.shape == (1, 32, 8) and ins.input.dtype == "int8"
    assert ins.input.scale > 0 and -128 <= ins.input.zero_point <= 127
    assert {"CONV_2D", "TRANSPOSE_CONV", "TRANSPOSE", "QUANTIZE", "DEQUANTIZE"} <= set(ins.op_names)
    y = tflm_predict(autoencoder_int8.path, ins.arena_bytes)(autoencoder_int8.inputs)
    assert y.shape == autoencoder_int8.reference.shape
    assert rel_rmse(y, autoencoder_int8.reference) < 0.05


def test_int16x8_has_16_bit_activations(export, classifier, digits, rel_rmse):
    from tinyexp.deploy.tflm import inspect, tflm_predict

    train_x, _, test_x, _ = digits
    out = export("classifier_int16x8", classifier, train_x[:256], test_x, "int16x8")
    assert (out.report["input_dtype"], out.report["output_dtype"]) == ("int16", "int16")
    ins = inspect(out.path)
    assert ins.loads, ins.error
    convs = [op for op in ins.ops if op[0] in ("CONV_2D", "FULLY_CONNECTED")]
    assert convs and all(op[1][:2] == ("int16", "int8") and op[2] == ("int16",) for op in convs)
    y = tflm_predict(out.path, ins.arena_bytes)(test_x)
    assert rel_rmse(y, out.reference) < 0.05


@pytest.mark.parametrize("mode, weights, refusal", [
    ("dynamic", "int8", "Hybrid models are not supported"),
    ("fp16", "float16", "DEQUANTIZE"),
])
def test_host_only_modes(export, classifier, digits, mode, weights, refusal):
    """dynamic and fp16 convert and run on the host; TFLite Micro refuses them, saying why."""
    from tinyexp.deploy.tflm import host_latency_ms, inspect, tflm_predict

    train_x, _, test_x, _ = digits
    out = export(f"classifier_{mode}", classifier, train_x[:16], test_x, mode)
    assert (out.report["input_dtype"], out.report["output_dtype"]) == ("float32", "float32")
    ins = inspect(out.path)
    assert any(weights in op[1] for op in ins.ops)
    assert not ins.loads and refusal in ins.error and "\n" not in ins.error
    with pytest.raises(DeployError, match="TFLite Micro cannot load it") as err:
        tflm_predict(out.path, 1 << 20)
    assert "\n" not in str(err.value)
    latency = host_latency_ms(out.path, test_x[:1], warmup=2, runs=5)
    assert 0 < latency["latency_ms"] <= latency["latency_p90_ms"]


def test_lstm_is_refused_in_one_line(export, tmp_path, one_thread):
    import torch

    from tinyexp.deploy.export import export_tflite
    from tinyexp.models.lstm import LSTMAutoencoder

    torch.manual_seed(0)
    net = LSTMAutoencoder(in_channels=2, window=12, hidden_size=4).eval()
    calibration = np.random.default_rng(0).standard_normal((8, 12, 2)).astype(np.float32)
    with pytest.raises(DeployError) as err:
        export_tflite(net, torch.from_numpy(calibration[:1]), calibration, "int8",
                      tmp_path / "lstm.tflite", arch="lstm")
    message = str(err.value)
    assert message.startswith("arch lstm, mode int8: nn.LSTM (encoder.layers.0) converts to ")
    assert "TFLite Micro cannot load" in message and "CONCATENATION" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_padded_conv_transpose_fails_without_the_rewrite(tmp_path, deploy_extra):
    import torch

    from tinyexp.deploy.export import export_tflite

    net = torch.nn.Sequential(
        torch.nn.ConvTranspose1d(8, 8, 7, stride=2, padding=3, output_padding=1)).eval()
    example = torch.randn(1, 8, 16)
    with pytest.raises(DeployError) as err:
        export_tflite(net, example, None, "fp16", tmp_path / "t.tflite", rewrite=False)
    assert str(err.value) == ("mode fp16: conversion failed: failed to legalize operation "
                              "'mhlo.convolution' that was explicitly marked illegal")
    report = export_tflite(net, example, None, "fp16", tmp_path / "t.tflite")
    assert report["rewrites"] == ["0: ConvTranspose1d(padding=3) -> ConvTranspose1d(padding=0) "
                                 "+ slice"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.tflite"]


def test_bad_arguments_fail_fast(tmp_path):
    torch = pytest.importorskip("torch")
    from tinyexp.deploy.export import export_tflite

    net, example = torch.nn.Linear(3, 2), torch.zeros(1, 3)
    cases = [
        ("int4", np.zeros((2, 3), np.float32), "mode int4: unknown"),
        ("int8", None, "mode int8: needs calibration"),
        ("int16x8", np.zeros((0, 3), np.float32), "mode int16x8: needs calibration"),
    ]
    for mode, calibration, message in cases:
        with pytest.raises(DeployError, match=message):
            export_tflite(net, example, calibration, mode, tmp_path / "x.tflite")
    with pytest.raises(DeployError, match="batch size 1"):
        export_tflite(net, torch.zeros(2, 3), None, "fp16", tmp_path / "x.tflite")
    assert MODES == ("float32", "dynamic", "int8", "fp16", "int16x8")
