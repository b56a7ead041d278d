"""Cost figures come from the exported artifact: MACs read off the graph, real file, real timing."""

from __future__ import annotations

import torch
from torch import nn

from tinyexp.measure.cost import artifact_cost, count_params, export_onnx, net_macs, onnx_macs

OPSET = 17


def test_macs_of_conv_linear_and_lstm_match_hand_counts(tmp_path):
    conv = nn.Sequential(nn.Conv1d(8, 16, 7, padding=3), nn.ReLU(),
                         nn.ConvTranspose1d(16, 4, 4, stride=2, padding=1))
    export_onnx(conv, torch.randn(1, 8, 20), tmp_path / "conv.onnx", opset=OPSET)
    # Conv: 16 out channels x 20 steps x (8 x 7); ConvTranspose: 16 x 20 inputs x (4 x 4).
    assert onnx_macs(tmp_path / "conv.onnx") == 16 * 20 * 8 * 7 + 16 * 20 * 4 * 4

    class Rnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 12, batch_first=True)
            self.head = nn.Linear(12, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    export_onnx(Rnn(), torch.randn(1, 10, 8), tmp_path / "rnn.onnx", opset=OPSET)
    assert onnx_macs(tmp_path / "rnn.onnx") == 10 * 4 * 12 * (8 + 12) + 10 * 12 * 3


def test_attention_matmuls_are_counted(tmp_path):
    class Attn(nn.Module):
        def forward(self, x):  # (1, 6, 4): scores 6x6 over 4 dims, then 6x4 over 6
            return torch.softmax(x @ x.transpose(1, 2), -1) @ x

    export_onnx(Attn(), torch.randn(1, 6, 4), tmp_path / "attn.onnx", opset=OPSET)
    assert onnx_macs(tmp_path / "attn.onnx") == 6 * 6 * 4 + 6 * 4 * 6


def test_artifact_cost_reports_file_size_and_latency(tmp_path):
    net = nn.Linear(16, 4)
    path = export_onnx(net, torch.randn(1, 16), tmp_path / "lin.onnx", opset=OPSET)
    cost = artifact_cost(path, torch.randn(1, 16).numpy(), warmup=1, runs=5)
    assert cost["size_bytes"] == path.stat().st_size > count_params(net) * 4
    assert cost["macs"] == 16 * 4
    assert 0 < cost["latency_ms"] <= cost["latency_p90_ms"]
    assert [p.name for p in tmp_path.iterdir()] == ["lin.onnx"], "no temporary file left"


def test_every_architecture_exports_with_all_shapes_known(tmp_path):
    from tinyexp.models.cnn import ConvAutoencoder
    from tinyexp.models.custom_cnn import CustomCNN
    from tinyexp.models.lstm import LSTMAutoencoder
    from tinyexp.models.transformer import TransformerAutoencoder

    nets = {
        "cnn": (ConvAutoencoder(8, 32), torch.randn(1, 32, 8)),
        "lstm": (LSTMAutoencoder(8, 32, hidden_size=16), torch.randn(1, 32, 8)),
        "transformer": (TransformerAutoencoder(8, 32), torch.randn(1, 32, 8)),
        "custom_cnn": (CustomCNN(1, 10, 8), torch.randn(1, 1, 8, 8)),
    }
    # LSTM autoencoder by hand: encoder 32 steps x 4*16 gates x (8 + 16), decoder the same
    # over 16 inputs, head 32 x 16 x 8.
    lstm_macs = 32 * 64 * (8 + 16) + 32 * 64 * (16 + 16) + 32 * 16 * 8
    for name, (net, x) in nets.items():
        macs = onnx_macs(export_onnx(net, x, tmp_path / f"{name}.onnx", opset=OPSET))
        assert macs > 0, name
        if name == "lstm":
            assert macs == lstm_macs


def test_peak_activation_memory_follows_tensor_lifetimes(tmp_path):
    # input (1x100 floats = 400 B) -> Linear 100->50 (200 B) -> ReLU (200 B) -> Linear 50->10
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    path = export_onnx(net, torch.randn(1, 100), tmp_path / "mlp.onnx", opset=OPSET)
    # Peak while the first Linear runs: its input and output both live: 400 + 200.
    from tinyexp.measure.cost import peak_activation_bytes

    assert peak_activation_bytes(path) == 400 + 200


def test_flash_and_ram_are_the_tflite_micro_deployment(tmp_path):
    # flash: the .tflite's weights (5,610 floats) and tables; RAM: TFLM's arena, whose planned
    # activations are the input (400 B) and the first layer's 200 B (ReLU fused), rounded to
    # 16 B: 400 + 208; the persistent tail comes on top.
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    path = export_onnx(net, torch.randn(1, 100), tmp_path / "mlp.onnx", opset=OPSET)
    cost = artifact_cost(path, torch.randn(1, 100).numpy(), warmup=1, runs=5)
    assert cost["activation_bytes"] == 400 + 208
    assert cost["ram_bytes"] > cost["activation_bytes"]
    assert 5610 * 4 < cost["flash_bytes"] < 5610 * 4 + 2000
    assert cost["size_bytes"] == path.stat().st_size


def test_a_model_tflite_micro_cannot_run_keeps_the_onnx_figures(tmp_path):
    from tinyexp.measure.cost import peak_activation_bytes
    from tinyexp.models.lstm import LSTMAutoencoder

    path = export_onnx(LSTMAutoencoder(8, 32, hidden_size=8), torch.randn(1, 32, 8),
                       tmp_path / "lstm.onnx", opset=OPSET)
    cost = artifact_cost(path, torch.randn(1, 32, 8).numpy(), warmup=1, runs=2)
    assert cost["flash_bytes"] == cost["size_bytes"] == path.stat().st_size
    assert cost["ram_bytes"] == cost["activation_bytes"] == peak_activation_bytes(path)


def test_quantized_activations_take_less_ram(tmp_path):
    import numpy as np

    from tinyexp.compress.quantize import quantize_onnx
    from tinyexp.measure.cost import peak_activation_bytes

    net = nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 8, 3, padding=1))
    src = export_onnx(net.eval(), torch.randn(1, 8, 64), tmp_path / "f.onnx", opset=OPSET,
                      compact=False)
    for fmt in ("qoperator", "qdq"):  # QDQ is fused to integer kernels when it runs
        dst = quantize_onnx(src, tmp_path / f"{fmt}.onnx", "int8",
                            np.random.randn(16, 8, 64).astype(np.float32),
                            per_channel=True, calibrate_method="minmax", format=fmt)
        assert peak_activation_bytes(dst) < 0.5 * peak_activation_bytes(src), fmt


def test_net_macs_counts_the_export_and_leaves_the_net_as_it_was(tmp_path):
    net = nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 4))
    net.train()
    x = torch.randn(5, 16)  # any batch: MACs are per batch-1 inference
    assert net_macs(net, x, opset=OPSET) == 16 * 8 + 8 * 4
    assert net.training  # export ran in eval mode, then restored the caller's
    path = export_onnx(net, x[:1], tmp_path / "mlp.onnx", opset=OPSET)
    assert net.training and onnx_macs(path) == 16 * 8 + 8 * 4
