"""Brevitas QAT: every architecture, pruned or not, becomes a quantized model that trains.

Exporting the result to QCDQ ONNX is tested in ``test_qat_export.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase
from nets import SMALL, C, W, build, sample

from tinyexp.compress.qat import (
    QuantInputLSTM,
    calibrate,
    qat_unsupported,
    qat_weight_bits,
    to_qat,
)

ARCHS = list(SMALL)
CASES = [pytest.param(a, p, id=f"{a}-{'pruned' if p else 'full'}") for a in ARCHS
         for p in (False, True)]
QUANT_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.Linear, nn.LSTM)


def float_net(arch: str, pruned: bool) -> nn.Module:
    """A float model in eval mode; ``pruned`` halves its widths."""
    return build(arch, pruned=pruned).eval()


def quantized_layer_names(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if type(m) in QUANT_TYPES]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize(("arch", "pruned"), CASES)
@pytest.mark.parametrize("weight_bits", [4, 8])
def test_forward_shape_and_accuracy(arch, pruned, weight_bits):
    net = float_net(arch, pruned)
    x = sample(arch, 16)
    qnet = calibrate(to_qat(net, weight_bits, 8), x).eval()
    with torch.no_grad():
        ref, got = net(x), qnet(x)
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()
    # w8a8 is close to float; w4 (15 levels) is further off but still the same function
    assert rel_err(got, ref) < (0.05 if weight_bits == 8 else 0.35)


@pytest.mark.parametrize(("arch", "pruned"), CASES)
def test_layers_replaced_and_float_weights_carried_over(arch, pruned):
    net = float_net(arch, pruned)
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


@pytest.mark.parametrize("arch", ARCHS)
def test_input_net_is_not_modified(arch):
    net = float_net(arch, pruned=False)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    types = [type(m) for m in net.modules()]
    qnet = calibrate(to_qat(net, 4, 8), sample(arch, 16))
    assert qnet is not net and qnet.training  # mode carried over
    assert net.training
    assert [type(m) for m in net.modules()] == types
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # training the copy must not touch the original's tensors either
    opt = torch.optim.SGD(qnet.parameters(), lr=0.1)
    qnet(sample(arch, 16)).pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(("arch", "pruned"), CASES)
@pytest.mark.parametrize("calibrated", [True, False])
def test_a_few_training_steps(arch, pruned, calibrated):
    net = float_net(arch, pruned)
    x = sample(arch, 16)
    qnet = to_qat(net, 4, 8)
    if calibrated:
        calibrate(qnet, [(x, None)])  # loader-style (input, target) batches work too
    # (uncalibrated, the first training steps collect the activation statistics themselves)
    qnet.train()
    before = {n: p.detach().clone() for n, p in qnet.named_parameters()}
    opt = torch.optim.Adam(qnet.parameters(), lr=1e-2)
    for _ in range(3):
        out = qnet(x)
        loss = out.pow(2).mean() if arch == "small-custom_cnn" else (out - x).pow(2).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = {n for n, p in qnet.named_parameters() if n.endswith("weight")}
    changed = {n for n in weights if not torch.equal(before[n], qnet.get_parameter(n))}
    assert changed == weights  # gradients reach every weight through the quantizers
    assert torch.isfinite(qnet.eval()(x)).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("weight_bits", [4, 8])
def test_qat_weight_bits(arch, weight_bits):
    net = float_net(arch, pruned=False)
    bits = qat_weight_bits(to_qat(net, weight_bits, 8))
    assert bits == {name: weight_bits for name in quantized_layer_names(net)}
    assert qat_weight_bits(net) == {}  # a float net has no quantized layers


@pytest.mark.parametrize(("weight_bits", "act_bits"),
                         [(1, 8), (9, 8), (4, 1), (4, 9), (0, 0), (4.5, 8), (True, 8)])
def test_bad_bit_widths_raise(weight_bits, act_bits):
    with pytest.raises(ValueError, match="bits"):
        to_qat(float_net("small-cnn", pruned=False), weight_bits, act_bits)


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
        assert qnet(sample("small-cnn", 16)).shape == (16, W, C)
    for arch in ARCHS:
        assert qat_unsupported(float_net(arch, pruned=False)) == []


def test_bare_layer_is_quantized():
    layer = nn.Linear(C, 4)
    qlayer = to_qat(layer, 4, 8)
    assert type(qlayer).__name__ == "QuantLinear"
    assert qat_weight_bits(qlayer) == {"": 4}


# ----------------------------------------------------------------------------- calibration


def _scaling(quant_proxy: nn.Module) -> nn.Module:
    return quant_proxy.fused_activation_quant_proxy.tensor_quant.scaling_impl


@pytest.mark.parametrize("arch", ARCHS)
def test_calibration_sets_every_activation_range_from_its_input(arch):
    net = float_net(arch, pruned=False)
    qnet = to_qat(net, 8, 8)
    proxies = {name: m for name, m in qnet.named_modules()
               if isinstance(m, ActQuantProxyFromInjectorBase) and m.is_quant_enabled}
    # one input quantizer per quantized layer (QuantInputLSTM's sits in its QuantIdentity),
    # the network's first layer included
    assert sorted(n.removesuffix(".act_quant").removesuffix(".input_quant")
                  for n in proxies) == sorted(quantized_layer_names(net))
    seen: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, args) -> None:
            seen[name] = args[0].detach().abs().flatten()
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in proxies.items()]
    x = sample(arch, 32)
    calibrate(qnet, x)
    for hook in hooks:
        hook.remove()
    for name, proxy in proxies.items():
        scaling = _scaling(proxy)
        assert scaling.counter > scaling.collect_stats_steps, name  # learned from now on
        expected = torch.quantile(seen[name], 0.99999)  # Brevitas' percentile: nearly the max
        torch.testing.assert_close(scaling.value.detach(), expected, rtol=0.02, atol=1e-6)


def test_calibration_ranges_span_all_batches_not_their_mean():
    layer = nn.Linear(C, 4)
    quiet, loud = torch.randn(256, C), 10 * torch.randn(256, C)
    qlayer = calibrate(to_qat(layer, 8, 8), [quiet, (loud, None)])
    value = float(_scaling(qlayer.input_quant).value)
    # one pass over both: the loud batch sets the range (an average would halve it)
    assert value > 0.9 * float(loud.abs().max())
