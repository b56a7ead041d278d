"""TFLite Micro estimates from ONNX: the planner by hand, each model family against TFLM itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tinyexp.measure import mcu
from tinyexp.measure._tflite_graph import Graph
from tinyexp.measure.cost import export_onnx

OPSET = 17
WITHIN = 0.10  # the estimate's promise: flash and arena within 10% of the deployed file's


# --- the planner and the arena's two ends, by hand ------------------------------------------

def test_planner_puts_the_largest_first_and_reuses_memory_once_a_buffer_is_dead():
    # (size, first use, last use): B (64) goes to 0; A lives with B, so it goes above it;
    # C lives with B but not with A, so it takes A's place: high-water mark 64 + 32.
    offsets, peak = mcu.greedy_plan([(32, 0, 1), (64, 1, 2), (32, 2, 3)])
    assert offsets == [64, 0, 64] and peak == 96


def test_planner_fills_a_gap_below_a_live_buffer():
    # X (64) at 0; Y overlaps X, so it sits above at 64; W overlaps only Y and fits below it.
    offsets, peak = mcu.greedy_plan([(64, 0, 1), (48, 1, 3), (32, 2, 3)])
    assert offsets == [0, 64, 0] and peak == 112


def test_planner_breaks_size_ties_as_tflm_does():
    # TFLM fills its sort array from the back: of two equal buffers the later one goes first.
    assert mcu.greedy_plan([(16, 0, 1), (16, 0, 1)]) == ([16, 0], 32)
    assert mcu.greedy_plan([]) == ([], 0)


def _chain(sizes: list[int]) -> Graph:
    """input -> op -> ... a chain of float tensors of ``sizes`` bytes (one element = 4 B)."""
    g = Graph()
    t = g.tensor((sizes[0] // 4,))
    g.inputs = [t]
    for size in sizes[1:]:
        t = g.op("RELU", [t], (size // 4,))
    g.outputs = [t]
    return g


def test_head_uses_tflm_lifetimes_and_16_byte_alignment():
    # input 100 B -> 200 B -> 40 B, rounded to 112, 208, 48. The input lives at scopes 0-1,
    # the middle one 1-2, the output 2-2: only the first two meet, so the head is 112 + 208.
    assert mcu.plan_head(_chain([100, 200, 40])) == 112 + 208


def test_tail_counts_structures_per_tensor_and_operator():
    g = _chain([64, 64, 64])  # 3 tensors, 2 RELU operators, one input and one output
    expected = (mcu._TAIL_FIXED + 3 * mcu._TAIL_EVAL_TENSOR
                + 2 * (mcu._TAIL_NODE + mcu._OPDATA["RELU"]) + 2 * mcu._TAIL_IO_TENSOR)
    assert mcu.tail_bytes(g) == expected


def test_per_channel_arrays_and_batch_matmul_copies_are_in_the_tail():
    g = Graph()
    x = g.tensor((1, 4, 4, 3))
    w, b = g.tensor((10, 3, 3, 3), const=True), g.tensor((10,), const=True)
    y = g.op("CONV_2D", [x, w, b], (1, 4, 4, 10))
    z = g.op("BATCH_MATMUL", [y, y], (1, 4, 4, 10))  # the right operand is copied
    g.inputs, g.outputs = [x], [z]
    conv = mcu._TAIL_NODE + mcu._OPDATA["CONV_2D"] + 2 * 48  # 10 int32 multipliers, shifts
    bmm = mcu._TAIL_NODE + mcu._OPDATA["BATCH_MATMUL"] + 640
    assert mcu.tail_bytes(g) == (mcu._TAIL_FIXED + 5 * mcu._TAIL_EVAL_TENSOR + conv + bmm
                                 + 2 * mcu._TAIL_IO_TENSOR)


def test_an_lstm_is_refused(tmp_path):
    from tinyexp.models.lstm import LSTMAutoencoder

    path = export_onnx(LSTMAutoencoder(8, 32, hidden_size=8), torch.randn(1, 32, 8),
                       tmp_path / "lstm.onnx", opset=OPSET)
    with pytest.raises(mcu.Unsupported, match="LSTM"):
        mcu.estimate(path)


# --- each model family against a real .tflite in TFLite Micro --------------------------------

def _lifelike(net: nn.Module) -> nn.Module:
    """Trained-looking normalization: identity BatchNorm/LayerNorm would let the converter
    fold them away, which trained ones do not allow."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
        if isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.2, 0.2, generator=gen)
    return net.eval()


class SigmoidGELU(nn.Module):
    """x * sigmoid(1.702 x): TFLite Micro has no GELU kernel, so the arena of a transformer
    is measured with this stand-in (the estimate reads the same substitution in the ONNX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _family(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "cnn":  # sensors: 32-step windows of 8 channels; a pruned-like width
        from tinyexp.models.cnn import ConvAutoencoder

        return _lifelike(ConvAutoencoder(8, 32, channels=[16, 8])), torch.randn(1, 32, 8)
    if name == "custom_cnn":  # digits: 8x8 images
        from tinyexp.models.custom_cnn import CustomCNN

        return _lifelike(CustomCNN(1, 10, 8, channels=[16, 32])), torch.rand(1, 1, 8, 8) * 16
    from tinyexp.models.transformer import TransformerAutoencoder

    net = TransformerAutoencoder(8, 32, d_model=16, num_heads=2, num_layers=1, ff_dim=32)
    for block in net.blocks:
        block.ffn.act = SigmoidGELU()
    return _lifelike(net), torch.randn(1, 32, 8)


def _onnx_artifact(net: nn.Module, x: torch.Tensor, mode: str, calibration: np.ndarray,
                   folder: Path) -> Path:
    """The artifact tinyexp measures: the export, or its ONNX Runtime quantization."""
    from tinyexp.compress.quantize import quantize_onnx
    from tinyexp.measure.cost import compact_onnx

    if mode == "float32":
        return export_onnx(net, x, folder / "float.onnx", opset=OPSET)
    src = export_onnx(net, x, folder / "src.onnx", opset=OPSET, compact=False)
    return compact_onnx(quantize_onnx(src, folder / "int8.onnx", "int8", calibration,
                                      per_channel=True, calibrate_method="minmax",
                                      format="qoperator"))


def _check_against_tflm(family: str, mode: str, tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    pytest.importorskip("tflite_micro")
    export = pytest.importorskip("tinyexp.deploy.export")
    tflm = pytest.importorskip("tinyexp.deploy.tflm")
    if mode not in export.MODES:
        pytest.skip(f"tinyexp.deploy.export has no {mode} mode")
    net, x = _family(family)
    calibration = (torch.randn(32, *x.shape[1:]) if family != "custom_cnn"
                   else torch.rand(32, *x.shape[1:]) * 16).numpy()
    estimate = mcu.estimate(_onnx_artifact(net, x, mode, calibration, tmp_path))
    assert estimate.mode == mode
    export.export_tflite(net, x, calibration, mode, tmp_path / "model.tflite")
    found = tflm.inspect(tmp_path / "model.tflite")
    assert found.loads, found.error
    assert estimate.flash_bytes == pytest.approx(found.flash_bytes, rel=WITHIN)
    assert estimate.arena_bytes == pytest.approx(found.arena_bytes, rel=WITHIN)
    assert estimate.head_bytes == pytest.approx(found.arena_head, rel=WITHIN)


@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_conv_autoencoder_matches_tflite_micro(mode, tmp_path):
    _check_against_tflm("cnn", mode, tmp_path)


@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_digits_cnn_matches_tflite_micro(mode, tmp_path):
    _check_against_tflm("custom_cnn", mode, tmp_path)


@pytest.mark.slow  # the int8 transformer takes litert-torch 15-30 s to convert
@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_transformer_matches_tflite_micro(mode, tmp_path):
    _check_against_tflm("transformer", mode, tmp_path)
