"""Structured pruning really shrinks every architecture, exactly and reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from nets import ARCHS, C, build, sample

from tinyexp.compress.prune import PruneReport, layer_widths, prune_structured
from tinyexp.compress.tp_patches import L1Importance, LSTMPruner
from tinyexp.measure.cost import count_params, export_onnx, onnx_macs, ort_session
from tinyexp.models.lstm import LSTMAutoencoder
from tinyexp.models.transformer import TransformerAutoencoder

OUTPUT_LAYER = "head"  # every model names its output layer `head`
OPSET = 17
# one model per architecture of tinyexp.models (the LSTM with stacked, LSTM-only groups)
MODELS = {"cnn": "cnn-w32", "lstm": "lstm-2layers", "transformer": "transformer-w32",
          "custom_cnn": "custom_cnn"}


def export_and_compare(net: nn.Module, name: str, path) -> int:
    """Export ``net`` as the pipeline does, check ONNX Runtime agrees with it; its MACs."""
    export_onnx(net, sample(name), path, opset=OPSET)
    session = ort_session(path)
    for seed in (1, 2):
        x = sample(name, seed=seed)
        with torch.no_grad():
            expected = net.eval()(x).numpy()
        (got,) = session.run(["output"], {"input": x.numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    return onnx_macs(path)


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("name", list(ARCHS))
def test_half_ratio_really_shrinks(name: str, tmp_path) -> None:
    net = build(name)
    x = sample(name, 4)
    with torch.no_grad():
        out_shape = net.eval()(x).shape
    macs_before = export_and_compare(net, name, tmp_path / "float.onnx")
    net.train()

    pruned, report = prune_structured(net, sample(name), ratio=0.5, importance=L1Importance())

    assert pruned is net  # in place
    assert net.training  # the caller's mode is restored
    assert isinstance(report, PruneReport)
    assert report.params_before == count_params(build(name))
    assert report.params_after == count_params(net)
    assert report.params_after <= 0.70 * report.params_before
    assert report.groups_pruned > 0
    # no layer silently left at full width, and the output layer kept its width
    for layer, before in report.widths_before.items():
        after = report.widths_after[layer]
        assert after == before if layer == OUTPUT_LAYER else after < before, layer
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == out_shape and torch.isfinite(y).all()
    assert export_and_compare(net, name, tmp_path / "pruned.onnx") < 0.75 * macs_before


@pytest.mark.parametrize("name", ["cnn-w60", "lstm-2layers", "transformer-w60", "custom_cnn"])
def test_pruning_is_deterministic(name: str) -> None:
    a, rep_a = prune_structured(build(name), sample(name), ratio=0.5, importance=L1Importance())
    b, rep_b = prune_structured(build(name), sample(name), ratio=0.5, importance=L1Importance())
    assert rep_a == rep_b
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["cnn-w60", "lstm-w60", "transformer-w60", "custom_cnn"])
def test_ratio_zero_is_a_noop(name: str) -> None:
    net = build(name).eval()
    x = sample(name, 3)
    with torch.no_grad():
        before = net(x)
    calls = []
    _, report = prune_structured(net, sample(name), ratio=0.0, importance=L1Importance(),
                                 finetune=calls.append)
    assert report.params_after == report.params_before == count_params(build(name))
    assert report.groups_pruned == 0
    assert report.widths_after == report.widths_before
    assert len(calls) == 1
    with torch.no_grad():
        assert torch.equal(net(x), before)


@pytest.mark.parametrize("name", ["cnn-w60", "lstm-w60", "transformer-w60", "custom_cnn"])
def test_two_steps_reach_the_same_size_and_finetune_twice(name: str) -> None:
    _, one = prune_structured(build(name), sample(name), ratio=0.5, importance=L1Importance(),
                              steps=1)
    seen: list[int] = []
    net, two = prune_structured(build(name), sample(name), ratio=0.5, importance=L1Importance(),
                                steps=2, finetune=lambda m: seen.append(count_params(m)))
    assert len(seen) == 2
    assert seen[0] > seen[1] == two.params_after  # half-way after step 1, final after step 2
    assert two.steps == 2
    assert abs(two.params_after - one.params_after) <= 0.05 * one.params_before
    assert two.widths_after == one.widths_after  # the same widths, maybe different channels


def test_finetune_sees_the_pruned_model_and_can_train_it() -> None:
    name = "lstm-w60"
    x = sample(name, 8)

    def finetune(m: nn.Module) -> None:
        opt = torch.optim.SGD(m.parameters(), lr=0.01)  # params were replaced: new optimizer
        m.train()
        for _ in range(2):
            opt.zero_grad()
            loss = (m(x) - x).pow(2).mean()
            loss.backward()
            opt.step()

    net, report = prune_structured(build(name), sample(name), ratio=0.5,
                                   importance=L1Importance(), steps=2, finetune=finetune)
    assert report.params_after <= 0.7 * report.params_before
    assert net.training  # the caller's mode (train, as built) is restored


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio_raises(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        prune_structured(build("cnn-w60"), sample("cnn-w60"), ratio=ratio,
                         importance=L1Importance())


@pytest.mark.parametrize("steps", [0, -1])
def test_bad_steps_raise(steps: int) -> None:
    with pytest.raises(ValueError, match="steps"):
        prune_structured(build("cnn-w60"), sample("cnn-w60"), ratio=0.5,
                         importance=L1Importance(), steps=steps)


@pytest.mark.parametrize("name", ["cnn-w60", "lstm-w60", "transformer-w60", "custom_cnn"])
def test_round_to_keeps_multiples(name: str) -> None:
    _, report = prune_structured(build(name), sample(name), ratio=0.6,
                                 importance=L1Importance(), round_to=4)
    for layer, width in report.widths_after.items():
        if layer != OUTPUT_LAYER:
            assert width % 4 == 0, (layer, width)


@pytest.mark.parametrize("round_to", [0, -4])
def test_bad_round_to_raises(round_to: int) -> None:
    with pytest.raises(ValueError, match="round_to"):
        prune_structured(build("cnn-w60"), sample("cnn-w60"), ratio=0.5,
                         importance=L1Importance(), round_to=round_to)


# ----------------------------------------------------------------------------- any importance


def _random_prune(name: str, seed: int) -> tuple[nn.Module, PruneReport]:
    net = build(name)
    torch.manual_seed(seed)  # RandomImportance draws from torch's global generator
    return prune_structured(net, sample(name), ratio=0.5,
                            importance=tp.importance.RandomImportance())


@pytest.mark.parametrize("arch", list(MODELS))
def test_random_importance_prunes_every_architecture(arch: str) -> None:
    name = MODELS[arch]
    x = sample(name, 4)
    with torch.no_grad():
        out_shape = build(name).eval()(x).shape
    lstm_widths = {n: m.hidden_size for n, m in build(name).named_modules()
                   if isinstance(m, nn.LSTM)}

    net, report = _random_prune(name, seed=0)

    # every group shrinks, LSTM-only ones (hidden units between stacked LSTMs) included
    for layer, before in report.widths_before.items():
        after = report.widths_after[layer]
        assert after == before if layer == OUTPUT_LAYER else after < before, layer
    assert all(net.get_submodule(n).hidden_size < w for n, w in lstm_widths.items())
    assert report.params_after <= 0.70 * report.params_before
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == out_shape and torch.isfinite(y).all()

    # the same seed prunes the same channels; another seed picks other ones
    again, report_again = _random_prune(name, seed=0)
    other, _ = _random_prune(name, seed=1)
    assert report_again.widths_after == report.widths_after
    state, same, different = net.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not all(torch.equal(state[k], different[k]) for k in state)


# ----------------------------------------------------------------------------- LSTM


def _kill_units(lstm: nn.LSTM, units: torch.Tensor, readers: list[torch.Tensor]) -> None:
    """Make hidden units dead: zero gate rows + biases (so h_j = 0 always) and all reads of them."""
    hidden = lstm.hidden_size
    rows = torch.cat([units + g * hidden for g in range(4)])
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith(("weight", "bias")):
                p[rows] = 0.0
        lstm.weight_hh_l0[:, units] = 0.0
        for w in readers:  # the next LSTM's weight_ih / the head's weight
            w[:, units] = 0.0


@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "plain-cpu-kernel"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_pruning_is_exact_on_dead_units(num_layers: int, mkldnn: bool) -> None:
    """Removing units whose h_t is always 0 must not change the output at all.

    This checks that all four gates, both biases, the recurrent columns and the readers'
    input columns are sliced consistently (any mix-up changes the output).
    """
    torch.manual_seed(0)
    net = LSTMAutoencoder(in_channels=C, window=60, num_layers=num_layers).eval()
    lstms = [*net.encoder.layers, *net.decoder.layers]
    readers = [m.weight_ih_l0 for m in lstms[1:]] + [net.head.weight]
    gen = torch.Generator().manual_seed(3)
    for lstm, reader in zip(lstms, readers, strict=True):
        _kill_units(lstm, torch.randperm(32, generator=gen)[:16], [reader])
    x = sample("lstm-w60", 4)
    with torch.no_grad():
        expected = net(x)

    with torch.backends.mkldnn.flags(enabled=mkldnn):
        _, report = prune_structured(net, sample("lstm-w60"), ratio=0.5,
                                     importance=L1Importance())
        with torch.no_grad():
            got = net(x)

    for lstm in lstms:
        hidden, inp = lstm.hidden_size, lstm.input_size
        assert hidden == 16
        assert lstm.weight_ih_l0.shape == (4 * hidden, inp)
        assert lstm.weight_hh_l0.shape == (4 * hidden, hidden)
        assert lstm.bias_ih_l0.shape == lstm.bias_hh_l0.shape == (4 * hidden,)
    assert net.encoder.layers[0].input_size == C  # data channels untouched
    assert net.head.in_features == 16 and net.head.out_features == C
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert report.params_after <= 0.7 * report.params_before


def test_lstm_group_couples_hidden_units_with_their_readers() -> None:
    net = LSTMAutoencoder(in_channels=C, window=60, num_layers=2)
    graph = tp.DependencyGraph().build_dependency(
        net, sample("lstm-w60"), customized_pruners={nn.LSTM: LSTMPruner()}
    )
    names = {m: n for n, m in net.named_modules()}

    def coupled(lstm: nn.LSTM) -> set[tuple[str, str]]:
        group = graph.get_pruning_group(lstm, LSTMPruner.prune_out_channels.__get__(
            graph.get_pruner_of_module(lstm)), idxs=[0, 1])
        print(group)  # the printout shows which layers shrink together
        return {(names[d.target.module], d.handler.__name__) for d, _ in group
                if isinstance(d.target.module, nn.Module) and d.target.module in names}

    assert ("decoder.layers.0", "prune_in_channels") in coupled(net.encoder.layers[1])
    assert ("encoder.layers.1", "prune_in_channels") in coupled(net.encoder.layers[0])
    assert ("head", "prune_in_channels") in coupled(net.decoder.layers[1])


def test_multi_layer_nn_lstm_is_pruned_consistently() -> None:
    """The handler also covers one nn.LSTM(num_layers=2): hidden units shrink in all layers."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(C, 24, num_layers=2, batch_first=True)
            self.head = nn.Linear(24, C)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    net = Net()
    _, report = prune_structured(net, sample("lstm-w60"), ratio=0.5, importance=L1Importance())
    rnn = net.rnn
    assert rnn.hidden_size == 12
    assert rnn.weight_ih_l1.shape == (48, 12) and rnn.weight_hh_l1.shape == (48, 12)
    assert net(sample("lstm-w60", 2)).shape == (2, 60, C)
    assert report.params_after <= 0.7 * report.params_before


# ----------------------------------------------------------------------------- attention


def test_transformer_prunes_attention_not_only_the_mlp() -> None:
    net = build("transformer-w60")
    _, report = prune_structured(net, sample("transformer-w60"), ratio=0.5,
                                 importance=L1Importance())
    for block in net.blocks:
        attn = block.attn
        assert (attn.num_heads, attn.head_dim) == (4, 4)  # every head kept, half its dims
        assert attn.qkv.out_features == 3 * 4 * 4 and attn.proj.in_features == 16
        assert block.ffn.fc1.out_features == 32
        # the residual width (d_model) is pruned too
        assert attn.qkv.in_features == attn.proj.out_features == block.ln1.normalized_shape[0] == 16
    assert net.embed.out_features == net.pos.embedding_dim == net.head.in_features == 16
    assert report.heads_after == {"blocks.0.attn": (4, 4), "blocks.1.attn": (4, 4)}


def test_transformer_head_dim_pruning_is_exact_on_dead_dims() -> None:
    """Dims whose q, k, v rows and proj columns are zero do not change the output."""
    torch.manual_seed(0)
    net = TransformerAutoencoder(in_channels=C, window=60).eval()
    dead_dims = torch.tensor([1, 3, 4, 6])  # the same dims in every head (tp averages over heads)
    with torch.no_grad():
        for block in net.blocks:
            attn, ffn = block.attn, block.ffn
            d = attn.num_heads * attn.head_dim
            cols = torch.cat([h * attn.head_dim + dead_dims for h in range(attn.num_heads)])
            rows = torch.cat([part * d + cols for part in range(3)])  # q, k and v
            attn.qkv.weight[rows] = 0.0
            attn.qkv.bias[rows] = 0.0
            attn.proj.weight[:, cols] = 0.0
            dead_units = torch.arange(0, 64, 2)  # GELU(0) = 0
            ffn.fc1.weight[dead_units] = 0.0
            ffn.fc1.bias[dead_units] = 0.0
            ffn.fc2.weight[:, dead_units] = 0.0
    x = sample("transformer-w60", 4)
    with torch.no_grad():
        expected = net(x)

    # keep the residual width: LayerNorm makes residual pruning inexact by nature
    prune_structured(net, sample("transformer-w60"), ratio=0.5, importance=L1Importance(),
                     ignored_layers=[net.embed])

    assert net.embed.out_features == 32
    for block in net.blocks:
        assert (block.attn.num_heads, block.attn.head_dim) == (4, 4)
        assert block.ffn.fc1.out_features == 32
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- report


def test_report_widths() -> None:
    net = build("cnn-w60")
    _, report = prune_structured(net, sample("cnn-w60"), ratio=0.5, importance=L1Importance())
    assert report.widths_before == {
        "encoder.0.0": 32, "encoder.1.0": 16, "decoder.0.0": 16, "decoder.1.0": 32, "head": C,
    }
    assert report.widths_after == layer_widths(net)
    assert (report.ratio, report.steps) == (0.5, 1)
