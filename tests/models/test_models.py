"""The four architectures: shapes, size checks, determinism, ONNX export + onnxruntime parity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from tinyexp.models.cnn import ConvAutoencoder
from tinyexp.models.custom_cnn import CustomCNN
from tinyexp.models.lstm import LSTMAutoencoder
from tinyexp.models.transformer import TransformerAutoencoder

C = 8  # series channels


pytestmark = pytest.mark.usefixtures("single_thread")

# name -> (factory, one sample's shape, output shape of one sample)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], tuple[int, ...]]] = {
    "cnn-w60": (lambda: ConvAutoencoder(in_channels=C, window=60), (60, C), (60, C)),
    "cnn-w32": (lambda: ConvAutoencoder(in_channels=C, window=32), (32, C), (32, C)),
    "cnn-3stage-w64": (
        lambda: ConvAutoencoder(in_channels=C, window=64, channels=[32, 16, 8], kernel_size=5),
        (64, C),
        (64, C),
    ),
    "lstm-w60": (lambda: LSTMAutoencoder(in_channels=C, window=60), (60, C), (60, C)),
    "lstm-w32": (lambda: LSTMAutoencoder(in_channels=C, window=32), (32, C), (32, C)),
    "lstm-2layers": (
        lambda: LSTMAutoencoder(in_channels=C, window=60, num_layers=2, dropout=0.1),
        (60, C),
        (60, C),
    ),
    "transformer-w60": (lambda: TransformerAutoencoder(in_channels=C, window=60), (60, C), (60, C)),
    "transformer-w32": (lambda: TransformerAutoencoder(in_channels=C, window=32), (32, C), (32, C)),
    "custom_cnn-8x8": (
        lambda: CustomCNN(in_channels=1, num_classes=10, image_size=8),
        (1, 8, 8),
        (10,),
    ),
    "custom_cnn-28x28-rgb": (
        lambda: CustomCNN(in_channels=3, num_classes=4, image_size=28, channels=[8, 8, 8]),
        (3, 28, 28),
        (4,),
    ),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CASES[name][0]().eval()


def batch(name: str, n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *CASES[name][1], generator=gen)


def export_and_compare(net: nn.Module, sample_shape: tuple[int, ...], path) -> None:
    """Export like the pipeline does, then check onnxruntime matches PyTorch at batch 1 and 4."""
    net = net.eval()
    torch.onnx.export(
        net, (torch.randn(2, *sample_shape),), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        x = torch.randn(n, *sample_shape)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(["output"], {"input": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_output_shape(name: str) -> None:
    net = build(name)
    for n in (1, 3):
        with torch.no_grad():
            y = net(batch(name, n))
        assert y.shape == (n, *CASES[name][2])
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(CASES))
def test_deterministic_with_seed(name: str) -> None:
    a, b, other = build(name, seed=0), build(name, seed=0), build(name, seed=1)
    x = batch(name, 4)
    with torch.no_grad():
        ya, yb, yo = a(x), b(x), other(x)
        assert torch.equal(ya, a(x))  # eval forward is repeatable (dropout off)
    assert torch.equal(ya, yb)
    assert not torch.allclose(ya, yo)


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_export_matches_onnxruntime(name: str, tmp_path) -> None:
    export_and_compare(build(name), CASES[name][1], tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", list(CASES))
def test_backward_reaches_every_parameter(name: str) -> None:
    net = build(name).train()
    net(batch(name, 2)).pow(2).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_series_models_read_window_major_input() -> None:
    # (B, W, C): time is dim 1. The CNN's receptive field is local in time, so perturbing
    # the last step must leave the first output step intact (it would not if W and C were
    # swapped inside the model)
    net = build("cnn-w60")
    x = batch("cnn-w60", 1)
    x2 = x.clone()
    x2[:, -1, :] += 10.0
    with torch.no_grad():
        y, y2 = net(x), net(x2)
    assert torch.equal(y[:, 0], y2[:, 0])
    assert not torch.equal(y[:, -1], y2[:, -1])


def test_transformer_attention_is_written_out() -> None:
    net = build("transformer-w60")
    assert not any(isinstance(m, nn.MultiheadAttention) for m in net.modules())
    attn = net.blocks[0].attn
    assert (attn.num_heads, attn.head_dim) == (4, 8)
    assert attn.qkv.out_features == 3 * 32 and attn.proj.in_features == 32


def test_lstm_layers_are_stacked_single_layer_modules() -> None:
    net = build("lstm-2layers")
    lstms = [m for m in net.modules() if isinstance(m, nn.LSTM)]
    assert len(lstms) == 4 and all(m.num_layers == 1 and m.batch_first for m in lstms)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConvAutoencoder(in_channels=C, window=30),  # 30 % 4 != 0
        lambda: ConvAutoencoder(in_channels=C, window=60, channels=[8, 8, 8]),  # 60 % 8 != 0
        lambda: ConvAutoencoder(in_channels=C, window=60, kernel_size=4),
        lambda: ConvAutoencoder(in_channels=C, window=60, channels=[]),
        lambda: TransformerAutoencoder(in_channels=C, window=60, d_model=30, num_heads=4),
        lambda: LSTMAutoencoder(in_channels=C, window=60, num_layers=0),
        lambda: CustomCNN(in_channels=1, num_classes=10, image_size=4, channels=[4, 4, 4]),
    ],
)
def test_bad_sizes_raise(make: Callable[[], nn.Module]) -> None:
    with pytest.raises(ValueError):
        make()


def test_cnn_window_error_is_explicit() -> None:
    with pytest.raises(ValueError, match="divisible by 2\\*\\*len\\(channels\\)=4"):
        ConvAutoencoder(in_channels=C, window=62)
