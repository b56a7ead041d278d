"""Brevitas QAT models export to QCDQ ONNX that ONNX Runtime runs like PyTorch does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from nets import SMALL, C, W, build, sample
from onnx import numpy_helper

from tinyexp.compress.prune import prune_structured
from tinyexp.compress.qat import calibrate, export_qcdq, to_qat
from tinyexp.compress.tp_patches import L1Importance
from tinyexp.models.custom_cnn import CustomCNN
from tinyexp.models.lstm import LSTMAutoencoder

OPSET = 17
CASES = [pytest.param(a, p, id=f"{a}-{'pruned' if p else 'full'}") for a in SMALL
         for p in (False, True)]


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    """The artifact's outputs in ONNX Runtime, one batch-1 sample at a time (static shapes).

    Its graph runs as written: every QuantizeLinear/DequantizeLinear pair as such, which is
    what the file means. ONNX Runtime's optimizer would fuse them into int8 kernels, and on an
    x86 CPU without VNNI (AVX2 only) those multiply u8 by s8 with 16-bit saturation, so 8-bit
    weights come out differently there (measured on an AMD EPYC with AVX2: 8-bit cases off by
    up to a third of the output range, 4-bit ones exact).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(["output"], {"input": x[i : i + 1].numpy()})[0] for i in range(len(x))]
    )


# ----------------------------------------------------------------------------- QCDQ export


@pytest.mark.parametrize(("arch", "pruned"), CASES)
@pytest.mark.parametrize(("weight_bits", "act_bits"), [(4, 8), (8, 8), (4, 4)])
def test_qcdq_export_runs_in_onnxruntime(arch, pruned, weight_bits, act_bits, tmp_path):
    net = build(arch, pruned=pruned).eval()
    x = sample(arch, 16)
    qnet = calibrate(to_qat(net, weight_bits, act_bits), x).eval()
    with torch.no_grad():
        before = qnet(x)
    path = export_qcdq(qnet, x, tmp_path / "model.onnx", opset=OPSET)
    assert path == tmp_path / "model.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left behind

    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "Clip", "DequantizeLinear"} <= ops
    if arch == "small-lstm":
        assert "LSTM" in ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_clips = [n for n in model.graph.node
                    if n.op_type == "Clip" and inits.get(n.input[0], np.zeros(0)).ndim > 1]
    assert weight_clips  # weights are stored as integers, clipped to their bit-width
    bound = 2 ** (weight_bits - 1) - 1  # signed narrow range
    for clip in weight_clips:
        weight, lo, hi = (inits[name] for name in clip.input)
        assert weight.dtype == np.int8
        assert (int(lo), int(hi)) == (-bound, bound)
        assert np.abs(weight).max() <= bound

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape == [1, *SMALL[arch][1]]  # static batch-1 shapes
    got = run_onnx(path, x[:3])
    with torch.no_grad():
        ref = np.concatenate([qnet(x[i : i + 1]).numpy() for i in range(3)])
    assert got.shape == ref.shape
    # identical arithmetic up to float rounding: at most an odd activation rounds the
    # other way, a tiny fraction of the output range
    for g, r in zip(got, ref, strict=True):
        assert np.abs(g - r).max() <= 1e-2 * np.abs(r).max() + 1e-6

    with torch.no_grad():
        assert torch.equal(qnet(x), before)  # export left the model as it was
    assert not qnet.training


def test_export_restores_training_mode_and_overwrites_atomically(tmp_path):
    net = build("small-lstm", pruned=True).eval()
    qnet = to_qat(net, 4, 8)
    qnet.train()
    path = tmp_path / "sub" / "q.onnx"
    path.parent.mkdir()
    path.write_bytes(b"old")
    export_qcdq(qnet, sample("small-lstm", n=4), path, opset=OPSET)
    assert qnet.training
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["q.onnx"]


def test_failed_export_leaves_no_file(tmp_path):
    qnet = to_qat(build("small-cnn").eval(), 4, 8)
    with pytest.raises(Exception):  # noqa: B017 - whatever the exporter raises
        # wrong input shape
        export_qcdq(qnet, torch.randn(1, 3, 3), tmp_path / "bad.onnx", opset=OPSET)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_qat_recovers_float_accuracy_on_digits(tmp_path):
    """Pruned CustomCNN on sklearn's digits: w4a8 QAT ends near float, ORT agrees with it."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]

    def fit(net: nn.Module, epochs: int, lr: float) -> None:
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(1)
        net.train()
        for _ in range(epochs):
            for idx in train[torch.randperm(len(train), generator=gen)].split(64):
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()

    def accuracy(net: nn.Module) -> float:
        with torch.no_grad():
            return float((net(x[test]).argmax(1) == y[test]).float().mean())

    torch.manual_seed(0)
    net = CustomCNN(in_channels=1, num_classes=10, image_size=8)
    fit(net, epochs=15, lr=3e-3)
    prune_structured(net, x[:2], ratio=0.5, importance=L1Importance())
    fit(net, epochs=5, lr=1e-3)
    float_acc = accuracy(net)
    assert float_acc > 0.9

    qnet = calibrate(to_qat(net, 4, 8), x[train].split(256))
    fit(qnet, epochs=5, lr=1e-3)
    qat_acc = accuracy(qnet)
    assert qat_acc > float_acc - 0.03

    path = export_qcdq(qnet, x[:1], tmp_path / "digits_w4a8.onnx", opset=OPSET)
    logits = run_onnx(path, x[test])
    with torch.no_grad():
        ref = qnet(x[test]).numpy()
    assert (logits.argmax(1) == ref.argmax(1)).mean() > 0.99
    assert (logits.argmax(1) == y[test].numpy()).mean() == pytest.approx(qat_acc, abs=0.01)


@pytest.mark.slow
def test_lstm_qat_keeps_reconstruction_error(tmp_path):
    """Pruned LSTM autoencoder on random sinusoids: w4a8 QAT error stays at the float level."""
    gen = torch.Generator().manual_seed(0)
    steps = torch.arange(W, dtype=torch.float32)

    def windows(n: int) -> torch.Tensor:
        # one random frequency and phase per window, shifted across the channels
        freq = torch.rand(n, 1, 1, generator=gen) * 0.2 + 0.2
        phase = torch.rand(n, 1, 1, generator=gen) * 6.28
        return torch.sin(steps[None, :, None] * freq + phase + 0.7 * torch.arange(C)[None, None])

    train, test = windows(512), windows(64)

    def fit(net: nn.Module, epochs: int, lr: float) -> None:
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        for _ in range(epochs):
            for xb in train[torch.randperm(len(train), generator=gen)].split(32):
                loss = (net(xb) - xb).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()

    def mse(net: nn.Module) -> float:
        with torch.no_grad():
            return float((net(test) - test).pow(2).mean())

    torch.manual_seed(0)
    net = LSTMAutoencoder(in_channels=C, window=W, hidden_size=32)
    fit(net, epochs=20, lr=1e-2)
    prune_structured(net, train[:2], ratio=0.5, importance=L1Importance())
    fit(net, epochs=5, lr=3e-3)
    float_mse = mse(net)
    assert float_mse < 0.1 * float(test.var())  # it learned something worth keeping

    qnet = calibrate(to_qat(net, 4, 8), train.split(128))
    start_mse = mse(qnet)  # 4-bit weights cost some accuracy before QAT...
    fit(qnet, epochs=5, lr=1e-3)
    qat_mse = mse(qnet)
    assert qat_mse < start_mse  # ...that training with the quantizers in the loop wins back
    assert qat_mse < 1.25 * float_mse

    path = export_qcdq(qnet, test[:1], tmp_path / "lstm_w4a8.onnx", opset=OPSET)
    recon = run_onnx(path, test)
    assert float(((recon - test.numpy()) ** 2).mean()) == pytest.approx(qat_mse, rel=1e-3)
