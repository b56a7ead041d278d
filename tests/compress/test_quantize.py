"""Post-training quantization: real ONNX Runtime artifacts, measured in the runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from support import INT8_SATURATES

from tinyexp.compress.quantize import float_compute_ops, quantize_onnx, weight_bytes
from tinyexp.measure.cost import compact_onnx, export_onnx, onnx_macs, ort_session
from tinyexp.models.cnn import ConvAutoencoder
from tinyexp.models.custom_cnn import CustomCNN
from tinyexp.models.lstm import LSTMAutoencoder
from tinyexp.models.transformer import TransformerAutoencoder

MODES = ["dynamic", "int8", "int16x8", "fp16"]
OPSET = 17
# every setting a mode may use, as the quant config group gives them; each test changes one
SETTINGS = {"per_channel": True, "calibrate_method": "minmax", "format": "qoperator"}


def int8(fmt: str) -> dict:
    return {**SETTINGS, "format": fmt}


def export(net, x, path):
    """The float model as the pipeline hands it to the quantizer (names kept)."""
    return export_onnx(net.eval(), x[:1], path, opset=OPSET, compact=False)


def _nets():
    torch.manual_seed(0)
    series = torch.randn(64, 32, 8)
    images = torch.rand(64, 1, 8, 8)
    return {
        "cnn": (ConvAutoencoder(8, 32), series),
        "lstm": (LSTMAutoencoder(8, 32, hidden_size=16), series),
        "transformer": (TransformerAutoencoder(8, 32), series),
        "custom_cnn": (CustomCNN(1, 10, 8), images),
    }


def _run(path, x):
    session = ort_session(path)
    return np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("arch", ["cnn", "lstm", "transformer", "custom_cnn"])
@pytest.mark.parametrize("mode", [*MODES, "int8-qdq"])
def test_every_mode_quantizes_every_architecture(tmp_path, arch, mode):
    net, data = _nets()[arch]
    net.eval()
    x = data.numpy()
    src = export(net, data, tmp_path / "float.onnx")
    mode, _, fmt = mode.partition("-")
    dst = compact_onnx(quantize_onnx(src, tmp_path / "q.onnx", mode, x[:32],
                                     **int8(fmt or "qoperator")))
    onnx.checker.check_model(str(dst))
    with torch.no_grad():
        reference = net(data).numpy()
    out = _run(dst, x)
    assert out.shape == reference.shape
    # The artifact really is quantized: not bit-identical to float, yet close to it (close
    # where ONNX Runtime's int8 kernels compute exactly: not on x86 without VNNI).
    error = np.abs(out - reference).max()
    assert error > 0
    if not (INT8_SATURATES and mode in ("int8", "dynamic")):
        assert error < 0.25 * np.abs(reference).max() + 0.05, error
    assert onnx_macs(dst) == onnx_macs(src)  # precision changes, the work does not
    assert weight_bytes(dst) < weight_bytes(src)


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_int8_stores_weights_in_a_quarter_of_the_bytes(tmp_path, fmt):
    net, data = _nets()["custom_cnn"]
    src = export(net, data, tmp_path / "float.onnx")
    dst = quantize_onnx(src, tmp_path / "q.onnx", "int8", data.numpy(), **int8(fmt))
    ratio = weight_bytes(dst) / weight_bytes(src)
    assert 0.25 <= ratio < 0.4, ratio  # int8 weights; int32 biases and scales stay wider


def test_static_int8_keeps_lstm_in_float_and_says_so(tmp_path):
    net, data = _nets()["lstm"]
    src = export(net, data, tmp_path / "float.onnx")
    static = quantize_onnx(src, tmp_path / "s.onnx", "int8", data.numpy(), **int8("qdq"))
    dynamic = quantize_onnx(src, tmp_path / "d.onnx", "dynamic", per_channel=True)
    assert float_compute_ops(static)["LSTM"] == 2
    assert float_compute_ops(dynamic)["LSTM"] == 0  # DynamicQuantizeLSTM: int8 weights


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_fully_fused_int8_conv_model_has_no_float_compute(tmp_path, fmt):
    net, data = _nets()["custom_cnn"]
    src = export(net, data, tmp_path / "float.onnx")
    dst = quantize_onnx(src, tmp_path / "q.onnx", "int8", data.numpy(), **int8(fmt))
    assert sum(float_compute_ops(dst).values()) == 0


def test_transposed_convolutions_stay_float_in_int8_and_are_reported(tmp_path):
    net, data = _nets()["cnn"]
    src = export(net, data, tmp_path / "float.onnx")
    for fmt in ("qoperator", "qdq"):
        dst = quantize_onnx(src, tmp_path / f"{fmt}.onnx", "int8", data.numpy(), **int8(fmt))
        assert float_compute_ops(dst) == {"ConvTranspose": 2}, fmt


@pytest.mark.parametrize(("mode", "given", "error"), [
    ("int8", {"calibration": None}, "calibration"),
    ("int16x8", {"calibration": np.zeros((0, 32, 8), np.float32)}, "calibration"),
    ("int8", {"format": None}, "needs format"),
    ("int8", {"calibrate_method": None}, "needs calibrate_method"),
    ("int16x8", {"per_channel": None}, "needs per_channel"),
    ("dynamic", {"per_channel": None}, "needs per_channel"),
    ("int8", {"format": "qop"}, "format must be one of"),
    ("int8", {"calibrate_method": "max"}, "calibrate_method must be one of"),
    ("int4", {}, "unknown"),
])
def test_missing_or_unknown_settings_raise_before_writing(tmp_path, mode, given, error):
    net, data = _nets()["cnn"]
    src = export(net, data, tmp_path / "float.onnx")
    kwargs = {"calibration": data.numpy(), **SETTINGS, **given}
    with pytest.raises(ValueError, match=error):
        quantize_onnx(src, tmp_path / "q.onnx", mode, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.onnx"]


def test_modes_ignore_the_settings_they_do_not_use(tmp_path):
    net, data = _nets()["cnn"]
    src = export(net, data, tmp_path / "float.onnx")
    fp16 = quantize_onnx(src, tmp_path / "h.onnx", "fp16")
    dynamic = quantize_onnx(src, tmp_path / "d.onnx", "dynamic", per_channel=False)
    int16 = quantize_onnx(src, tmp_path / "s.onnx", "int16x8", data.numpy()[:8],
                          per_channel=False, calibrate_method="minmax")
    assert all(onnx_macs(p) == onnx_macs(src) for p in (fp16, dynamic, int16))


def test_weight_bytes_counts_clipped_integers_at_their_bit_width(tmp_path):
    weights = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Clip", ["w", "lo", "hi"], ["wc"]),
         onnx.helper.make_node("Cast", ["wc"], ["wf"], to=onnx.TensorProto.FLOAT),
         onnx.helper.make_node("MatMul", ["input", "wf"], ["output"])],
        "g",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(weights, "w"),
         onnx.numpy_helper.from_array(np.array(-8, np.int8), "lo"),
         onnx.numpy_helper.from_array(np.array(7, np.int8), "hi")],
    )
    path = tmp_path / "clip.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert weight_bytes(path) == 16 * 0.5 + 2  # 16 four-bit weights + two int8 bounds


def test_compact_names_shrinks_the_file_and_keeps_outputs(tmp_path):
    net, data = _nets()["transformer"]
    path = tmp_path / "t.onnx"
    torch.onnx.export(net.eval(), (data[:1],), str(path), dynamo=False,
                      input_names=["input"], output_names=["output"])
    before, reference = path.stat().st_size, _run(path, data[:4].numpy())
    compact_onnx(path)
    assert path.stat().st_size < before
    np.testing.assert_allclose(_run(path, data[:4].numpy()), reference, rtol=1e-5, atol=1e-6)


def _scales(path) -> dict[str, np.ndarray]:
    """The quantization scales stored in a file, by initializer name."""
    model = onnx.load(str(path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
            if "scale" in i.name}


@pytest.mark.parametrize(("mode", "arch", "widest"), [
    ("int8", "cnn", 32),            # the first conv's 32 output channels
    ("int16x8", "cnn", 32),
    ("dynamic", "custom_cnn", 64),  # dynamic mode: per channel for Linear layers only (ONNX
])                                  # Runtime's ConvInteger takes one weight scale)
def test_per_channel_stores_one_weight_scale_per_output_channel(tmp_path, mode, arch, widest):
    net, data = _nets()[arch]
    net.eval()
    src = export(net, data, tmp_path / "float.onnx")
    sizes = {}
    for per_channel in (False, True):
        dst = quantize_onnx(src, tmp_path / f"{per_channel}.onnx", mode, data.numpy()[:32],
                            **{**SETTINGS, "per_channel": per_channel})
        sizes[per_channel] = max(s.size for s in _scales(dst).values())
    assert sizes == {False: 1, True: widest}


# ~14 s each: int16x8 in the slow tier (the fast tier stays under 10 minutes)
@pytest.mark.parametrize("mode", ["int8", pytest.param("int16x8", marks=pytest.mark.slow)])
def test_calibration_method_sets_the_activation_ranges(tmp_path, mode):
    net, data = _nets()["cnn"]
    net.eval()
    data = data ** 3  # heavy tails: the outliers that entropy and percentile clip
    src = export(net, data, tmp_path / "float.onnx")
    found = {}
    for method in ("minmax", "entropy", "percentile"):
        dst = quantize_onnx(src, tmp_path / f"{method}.onnx", mode, data.numpy(),
                            **{**int8("qdq"), "calibrate_method": method})
        found[method] = _scales(dst)
    for method in ("entropy", "percentile"):
        assert found[method].keys() == found["minmax"].keys()
        assert any(not np.allclose(found[method][k], found["minmax"][k])
                   for k in found["minmax"]), f"{method} gave min-max's ranges"
    # Min-max covers every calibration value: the input scale is the largest of the three.
    name = "/Transpose_output_0_scale"  # the quantized input, transposed for Conv1d
    assert all(found["minmax"][name] >= found[m][name] for m in ("entropy", "percentile"))


@pytest.mark.parametrize(("mode", "fmt", "ops", "activation"), [
    ("int8", "qoperator", {"QLinearConv"}, np.uint8),       # integer operators
    ("int8", "qdq", {"QuantizeLinear", "DequantizeLinear", "Conv"}, np.uint8),
    ("int16x8", "qdq", {"QuantizeLinear", "DequantizeLinear", "Conv"}, np.int16),
])
def test_format_and_mode_decide_the_operators_and_activation_type(tmp_path, mode, fmt, ops,
                                                                  activation):
    net, data = _nets()["custom_cnn"]
    net.eval()
    src = export(net, data, tmp_path / "float.onnx")
    dst = quantize_onnx(src, tmp_path / "q.onnx", mode, data.numpy()[:32], **int8(fmt))
    model = onnx.load(str(dst))
    found = {n.op_type for n in model.graph.node}
    assert ops <= found, found
    if fmt == "qoperator":
        assert "Conv" not in found  # no float convolution left between Q/DQ pairs
    zero_points = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                   if i.name.endswith("zero_point")}
    # The input's quantization parameters: the activation type the mode promises.
    input_zero = next(v for k, v in zero_points.items() if k.startswith("input"))
    assert input_zero.dtype == activation
