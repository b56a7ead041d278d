"""Brevitas QAT: every architecture, pruned or not, quantizes, trains and exports to QCDQ ONNX."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from tinyexp.compress.prune import count_params, prune_l1
from tinyexp.compress.qat import (
    QuantInputLSTM,
    calibrate,
    export_qcdq,
    packed_weight_bytes,
    qat_unsupported,
    qat_weight_bits,
    to_qat,
)
from tinyexp.models.cnn import ConvAutoencoder
from tinyexp.models.custom_cnn import CustomCNN
from tinyexp.models.lstm import LSTMAutoencoder
from tinyexp.models.transformer import TransformerAutoencoder

C, W = 8, 32

# name -> (small model factory, one sample's shape)
ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "cnn": (lambda: ConvAutoencoder(in_channels=C, window=W, channels=(16, 8)), (W, C)),
    "lstm": (lambda: LSTMAutoencoder(in_channels=C, window=W, hidden_size=16), (W, C)),
    "transformer": (
        lambda: TransformerAutoencoder(
            in_channels=C, window=W, d_model=16, num_heads=2, num_layers=1, ff_dim=32
        ),
        (W, C),
    ),
    "custom_cnn": (
        lambda: CustomCNN(in_channels=1, num_classes=10, image_size=8, channels=(8, 16), hidden=32),
        (1, 8, 8),
    ),
}
CASES = [pytest.param(a, p, id=f"{a}-{'pruned' if p else 'full'}") for a in ARCHS
         for p in (False, True)]
QUANT_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.Linear, nn.LSTM)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine OpenMP's
    spinning threads make the step-by-step LSTM loops much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample(arch: str, n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *ARCHS[arch][1], generator=torch.Generator().manual_seed(seed))


def build(arch: str, pruned: bool, seed: int = 0) -> nn.Module:
    """A float model in eval mode; ``pruned`` halves its widths with ``prune_l1``."""
    torch.manual_seed(seed)
    net = ARCHS[arch][0]().eval()
    if pruned:
        before = count_params(net)
        prune_l1(net, sample(arch, 2), ratio=0.5)
        assert count_params(net) < 0.7 * before  # really pruned: to_qat sees odd widths
    return net


def quantized_layer_names(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if type(m) in QUANT_TYPES]


def qat_ready(net: nn.Module, weight_bits: int, act_bits: int, x: torch.Tensor) -> nn.Module:
    """``to_qat`` + calibration on ``x``, in eval mode."""
    return calibrate(to_qat(net, weight_bits, act_bits), x).eval()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize(("arch", "pruned"), CASES)
@pytest.mark.parametrize("weight_bits", [4, 8])
def test_forward_shape_and_accuracy(arch, pruned, weight_bits):
    net = build(arch, pruned)
    x = sample(arch)
    qnet = qat_ready(net, weight_bits, 8, x)
    with torch.no_grad():
        ref, got = net(x), qnet(x)
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()
    # w8a8 is close to float; w4 (15 levels) is further off but still the same function
    assert rel_err(got, ref) < (0.05 if weight_bits == 8 else 0.35)


@pytest.mark.parametrize(("arch", "pruned"), CASES)
def test_layers_replaced_and_float_weights_carried_over(arch, pruned):
    net = build(arch, pruned)
    qnet = to_qat(net, 4, 8)
    for name in quantized_layer_names(net):
        old, new = net.get_submodule(name), qnet.get_submodule(name)
        if isinstance(old, nn.LSTM):
            assert isinstance(new, QuantInputLSTM)
            layer = new.lstm.layers[0][0]
            gates = ("input", "forget", "cell", "output")  # torch's i, f, g, o row blocks
            w_ih = torch.cat([getattr(layer, f"{g}_gate_params").input_weight.weight
                              for g in gates])
            w_hh = torch.cat([getattr(layer, f"{g}_gate_params").hidden_weight.weight
                              for g in gates])
            bias = torch.cat([getattr(layer, f"{g}_gate_params").bias for g in gates])
            assert torch.equal(w_ih, old.weight_ih_l0)
            assert torch.equal(w_hh, old.weight_hh_l0)
            torch.testing.assert_close(bias, old.bias_ih_l0 + old.bias_hh_l0)
            assert layer.hidden_size == old.hidden_size  # pruned width, not the constructor's
        else:
            assert type(new).__module__.startswith("brevitas"), name
            assert new.weight.shape == old.weight.shape
            assert torch.equal(new.weight, old.weight)
            if old.bias is not None:
                assert torch.equal(new.bias, old.bias)
    # everything else (norms, embeddings) is untouched float
    for name, m in net.named_modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.Embedding)):
            new = qnet.get_submodule(name)
            assert type(new) is type(m)
            assert torch.equal(new.weight, m.weight)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_input_net_is_not_modified(arch):
    net = build(arch, pruned=False)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    types = [type(m) for m in net.modules()]
    qnet = calibrate(to_qat(net, 4, 8), sample(arch))
    assert qnet is not net and qnet.training  # mode carried over
    assert net.training
    assert [type(m) for m in net.modules()] == types
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # training the copy must not touch the original's tensors either
    opt = torch.optim.SGD(qnet.parameters(), lr=0.1)
    qnet(sample(arch)).pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(("arch", "pruned"), CASES)
@pytest.mark.parametrize("calibrated", [True, False])
def test_a_few_training_steps(arch, pruned, calibrated):
    net = build(arch, pruned)
    x = sample(arch)
    qnet = to_qat(net, 4, 8)
    if calibrated:
        calibrate(qnet, [(x, None)])  # loader-style (input, target) batches work too
    # (uncalibrated, the first training steps collect the activation statistics themselves)
    qnet.train()
    before = {n: p.detach().clone() for n, p in qnet.named_parameters()}
    opt = torch.optim.Adam(qnet.parameters(), lr=1e-2)
    for _ in range(3):
        out = qnet(x)
        loss = out.pow(2).mean() if arch == "custom_cnn" else (out - x).pow(2).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = {n for n, p in qnet.named_parameters() if n.endswith("weight")}
    changed = {n for n in weights if not torch.equal(before[n], qnet.get_parameter(n))}
    assert changed == weights  # gradients reach every weight through the quantizers
    assert torch.isfinite(qnet.eval()(x)).all()


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("weight_bits", [4, 8])
def test_qat_weight_bits(arch, weight_bits):
    net = build(arch, pruned=False)
    bits = qat_weight_bits(to_qat(net, weight_bits, 8))
    assert bits == {name: weight_bits for name in quantized_layer_names(net)}
    assert qat_weight_bits(net) == {}  # a float net has no quantized layers


@pytest.mark.parametrize(("weight_bits", "act_bits"),
                         [(1, 8), (9, 8), (4, 1), (4, 9), (0, 0), (4.5, 8), (True, 8)])
def test_bad_bit_widths_raise(weight_bits, act_bits):
    with pytest.raises(ValueError, match="bits"):
        to_qat(build("cnn", pruned=False), weight_bits, act_bits)


@pytest.mark.parametrize(("arch", "pruned"), CASES)
def test_packed_weight_bytes(arch, pruned):
    net = build(arch, pruned)
    n_weights = merged = 0
    for name in quantized_layer_names(net):
        m = net.get_submodule(name)
        if isinstance(m, nn.LSTM):
            n_weights += m.weight_ih_l0.numel() + m.weight_hh_l0.numel()
            merged += m.bias_hh_l0.numel()  # QuantLSTM keeps one bias: bias_ih + bias_hh
        else:
            n_weights += m.weight.numel()
    others = count_params(net) - n_weights - merged  # biases, norms, embeddings: float32
    for bits in (4, 8):
        packed = packed_weight_bytes(to_qat(net, bits, 8))
        assert packed == pytest.approx(n_weights * bits / 8 + 4 * others)
    assert packed_weight_bytes(net) == 4.0 * count_params(net)  # float net: 4 bytes each


def test_unsupported_lstm_stays_float_and_is_listed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(C, 8, proj_size=4, batch_first=True)  # no QuantLSTM twin
            self.head = nn.Linear(4, C)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    net = Net().eval()
    assert qat_unsupported(net) == ["rnn"]
    qnet = to_qat(net, 4, 8)
    assert type(qnet.rnn) is nn.LSTM
    assert qat_weight_bits(qnet) == {"head": 4}
    assert qat_unsupported(qnet) == ["rnn"]
    with torch.no_grad():
        assert qnet(sample("cnn")).shape == (16, W, C)
    for arch in ARCHS:
        assert qat_unsupported(build(arch, pruned=False)) == []


def test_bare_layer_is_quantized():
    layer = nn.Linear(C, 4)
    qlayer = to_qat(layer, 4, 8)
    assert type(qlayer).__name__ == "QuantLinear"
    assert qat_weight_bits(qlayer) == {"": 4}


# ----------------------------------------------------------------------------- QCDQ export


@pytest.mark.parametrize(("arch", "pruned"), CASES)
@pytest.mark.parametrize(("weight_bits", "act_bits"), [(4, 8), (8, 8), (4, 4)])
def test_qcdq_export_runs_in_onnxruntime(arch, pruned, weight_bits, act_bits, tmp_path):
    net = build(arch, pruned)
    x = sample(arch)
    qnet = qat_ready(net, weight_bits, act_bits, x)
    with torch.no_grad():
        before = qnet(x)
    path = export_qcdq(qnet, x, tmp_path / "model.onnx")
    assert path == tmp_path / "model.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left behind

    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "Clip", "DequantizeLinear"} <= ops
    if arch == "lstm":
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
    assert inp.name == "input" and inp.shape == [1, *ARCHS[arch][1]]  # static batch-1 shapes
    for i in range(3):
        (got,) = session.run(["output"], {"input": x[i : i + 1].numpy()})
        with torch.no_grad():
            ref = qnet(x[i : i + 1]).numpy()
        assert got.shape == ref.shape
        # identical arithmetic up to float rounding: at most an odd activation rounds the
        # other way, a tiny fraction of the output range
        assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max() + 1e-6

    with torch.no_grad():
        assert torch.equal(qnet(x), before)  # export left the model as it was
    assert not qnet.training


def test_export_restores_training_mode_and_overwrites_atomically(tmp_path):
    net = build("lstm", pruned=True)
    qnet = to_qat(net, 4, 8)
    qnet.train()
    path = tmp_path / "sub" / "q.onnx"
    path.parent.mkdir()
    path.write_bytes(b"old")
    export_qcdq(qnet, sample("lstm", n=4), path)
    assert qnet.training
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["q.onnx"]


def test_failed_export_leaves_no_file(tmp_path):
    qnet = to_qat(build("cnn", pruned=False), 4, 8)
    with pytest.raises(Exception):  # noqa: B017 - whatever the exporter raises
        export_qcdq(qnet, torch.randn(1, 3, 3), tmp_path / "bad.onnx")  # wrong input shape
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
    prune_l1(net, x[:2], ratio=0.5)
    fit(net, epochs=5, lr=1e-3)
    float_acc = accuracy(net)
    assert float_acc > 0.9

    qnet = calibrate(to_qat(net, 4, 8), x[train].split(256))
    fit(qnet, epochs=5, lr=1e-3)
    qat_acc = accuracy(qnet)
    assert qat_acc > float_acc - 0.03

    path = export_qcdq(qnet, x[:1], tmp_path / "digits_w4a8.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(["output"], {"input": x[i : i + 1].numpy()})[0] for i in test.tolist()]
    )
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
    prune_l1(net, train[:2], ratio=0.5)
    fit(net, epochs=5, lr=3e-3)
    float_mse = mse(net)
    assert float_mse < 0.1 * float(test.var())  # it learned something worth keeping

    qnet = calibrate(to_qat(net, 4, 8), train.split(128))
    start_mse = mse(qnet)  # 4-bit weights cost some accuracy before QAT...
    fit(qnet, epochs=5, lr=1e-3)
    qat_mse = mse(qnet)
    assert qat_mse < start_mse  # ...that training with the quantizers in the loop wins back
    assert qat_mse < 1.25 * float_mse

    path = export_qcdq(qnet, test[:1], tmp_path / "lstm_w4a8.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    recon = np.concatenate(
        [session.run(["output"], {"input": test[i : i + 1].numpy()})[0] for i in range(len(test))]
    )
    assert float(((recon - test.numpy()) ** 2).mean()) == pytest.approx(qat_mse, rel=1e-3)
