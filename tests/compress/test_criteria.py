"""Pruning criteria (l2, taylor, fpgm) and how the ratio is shared out (global, per layer)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from nets import build, sample
from torch.nn import functional as F

from tinyexp.compress.prune import (
    Allocation,
    UnknownLayerError,
    accumulate_gradients,
    dependency_graph,
    layer_widths,
    prune_structured,
    unprunable_layers,
)
from tinyexp.compress.sensitivity import layer_sensitivity
from tinyexp.compress.tp_patches import (
    FPGMImportance,
    L1Importance,
    LSTMPruner,
    MagnitudeImportance,
    TaylorImportance,
    traceable_forward,
)
from tinyexp.report.tables import write_rows_csv
from tinyexp.stages.prune import ratios_from_sensitivity

OUTPUT_LAYER = "head"
MODELS = {"cnn": "cnn-w32", "lstm": "lstm-2layers", "transformer": "transformer-w32",
          "custom_cnn": "custom_cnn"}
CRITERIA = ("l2", "taylor", "fpgm")


def _loss(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reconstruction MSE, or cross-entropy against fixed labels for the classifier."""
    y = net(x)
    if y.shape == x.shape:
        return F.mse_loss(y, x)
    return F.cross_entropy(y, torch.arange(len(x)) % y.shape[1])


def _gradients(name: str):
    """``before_step`` for Taylor: gradients over three batches of the model's inputs."""
    return lambda net: accumulate_gradients(net, [sample(name, 8, seed=s) for s in (5, 6, 7)],
                                            _loss)


def _criterion(criterion: str, name: str) -> dict:
    importance = {"l1": L1Importance, "l2": lambda: MagnitudeImportance(p=2),
                  "taylor": TaylorImportance, "fpgm": FPGMImportance}[criterion]()
    hooks = {"before_step": _gradients(name)} if criterion == "taylor" else {}
    return {"importance": importance, **hooks}


def _trained(name: str, steps: int = 40) -> nn.Module:
    """A model fitted a little to its inputs: weights and gradients no longer at random init."""
    net = build(name)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for i in range(steps):
        opt.zero_grad()
        _loss(net, sample(name, 16, seed=100 + i % 4)).backward()
        opt.step()
    return net


def _full_group(net: nn.Module, name: str, layer: str):
    graph = dependency_graph(net, sample(name))
    module = net.get_submodule(layer)
    fn = graph.get_pruner_of_module(module).prune_out_channels
    return graph.get_pruning_group(module, fn, idxs=list(range(layer_widths(net)[layer])))


# ----------------------------------------------------------------------------- every criterion


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_prunes_every_architecture(criterion: str, arch: str) -> None:
    name = MODELS[arch]
    x = sample(name, 4)
    with torch.no_grad():
        out_shape = build(name).eval()(x).shape

    net, report = prune_structured(build(name), sample(name), 0.5, **_criterion(criterion, name))

    # every group shrinks, the LSTM-only ones (between stacked LSTMs) included
    for layer, before in report.widths_before.items():
        after = report.widths_after[layer]
        assert after == before if layer == OUTPUT_LAYER else after < before, layer
    assert all(m.hidden_size == 16 for m in net.modules() if isinstance(m, nn.LSTM))
    assert report.params_after <= 0.70 * report.params_before
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == out_shape and torch.isfinite(y).all()


@pytest.mark.parametrize("criterion", CRITERIA)
def test_lstm_only_groups_are_scored_where_tp_skips_them(criterion: str) -> None:
    """tp's own importances return None for the hidden units between two stacked LSTMs."""
    name = "lstm-2layers"
    net = build(name)
    _gradients(name)(net)
    group = _full_group(net, name, "encoder.layers.0")
    stock = {"l2": tp.importance.GroupMagnitudeImportance(p=2),
             "taylor": tp.importance.GroupTaylorImportance(),
             "fpgm": tp.importance.FPGMImportance()}[criterion]
    assert stock(group) is None

    scores = _criterion(criterion, name)["importance"](group)
    assert scores.shape == (32,) and torch.isfinite(scores).all()
    assert len(set(scores.tolist())) > 1  # a ranking, not a constant


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_matches_tp_where_tp_scores(p: int) -> None:
    """On Conv/Linear groups the LSTM-aware importance is tp's, to the bit (L1 = p=1)."""
    net = build("cnn-w32")
    ours = L1Importance() if p == 1 else MagnitudeImportance(p=2)
    for layer in ("encoder.0.0", "encoder.1.0", "decoder.0.0"):
        group = _full_group(net, "cnn-w32", layer)
        assert torch.equal(ours(group), tp.importance.GroupMagnitudeImportance(p=p)(group))


def test_l2_ranks_differently_from_l1() -> None:
    a, _ = prune_structured(_trained("cnn-w32"), sample("cnn-w32"), 0.5, **_criterion("l1", ""))
    b, _ = prune_structured(_trained("cnn-w32"), sample("cnn-w32"), 0.5,
                            **_criterion("l2", ""))
    assert layer_widths(a) == layer_widths(b)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("arch", ["cnn", "lstm"])
def test_taylor_ranks_differently_from_l1_on_a_trained_net(arch: str) -> None:
    name = MODELS[arch]
    trained = _trained(name)
    scores = {}
    for criterion in ("l1", "taylor"):
        net = copy.deepcopy(trained)
        hooks = _criterion(criterion, name)
        if criterion == "taylor":
            hooks.pop("before_step")(net)
        first = "encoder.0.0" if arch == "cnn" else "encoder.layers.0"
        scores[criterion] = hooks["importance"](_full_group(net, name, first))
    kept = {c: set(s.argsort(descending=True)[:16].tolist()) for c, s in scores.items()}
    assert kept["l1"] != kept["taylor"]


def test_taylor_needs_gradients() -> None:
    with pytest.raises(RuntimeError, match="needs gradients.*before_step"):
        prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5, importance=TaylorImportance())


def test_taylor_recomputes_gradients_before_every_step() -> None:
    name = "cnn-w32"
    calls: list[int] = []
    grads = _gradients(name)

    def before_step(net: nn.Module) -> None:
        assert not net.training  # scored as traced: dropout off
        calls.append(layer_widths(net)["encoder.0.0"])
        grads(net)

    _, report = prune_structured(build(name), sample(name), 0.5, importance=TaylorImportance(),
                                 steps=2, before_step=before_step)
    assert calls == [32, 24] and report.widths_after["encoder.0.0"] == 16


def test_accumulate_gradients_sums_over_batches() -> None:
    net = build("cnn-w32").eval()  # as prune_structured calls before_step: no dropout
    batches = [sample("cnn-w32", 4, seed=s) for s in (1, 2)]
    assert accumulate_gradients(net, batches, _loss) == 2
    summed = [p.grad.clone() for p in net.parameters()]
    for batch in batches:
        accumulate_gradients(net, [batch], _loss)
        summed = [s - p.grad for s, p in zip(summed, net.parameters(), strict=True)]
    assert all(torch.allclose(s, torch.zeros_like(s), atol=1e-6) for s in summed)
    with pytest.raises(ValueError, match="no batch"):
        accumulate_gradients(net, [], _loss)


# ----------------------------------------------------------------------------- global ranking


@pytest.mark.parametrize("name", ["cnn-w32", "lstm-2layers", "custom_cnn"])
def test_global_ranking_gives_non_uniform_widths_at_the_same_ratio(name: str) -> None:
    _, uniform = prune_structured(build(name), sample(name), 0.5, importance=L1Importance())
    _, ranked = prune_structured(build(name), sample(name), 0.5, importance=L1Importance(),
                                 allocation=Allocation(global_ranking=True))
    inner = [k for k in uniform.widths_before if k != OUTPUT_LAYER]
    assert sum(ranked.widths_after[k] for k in inner) == sum(uniform.widths_after[k]
                                                             for k in inner)
    assert [ranked.widths_after[k] for k in inner] != [uniform.widths_after[k] for k in inner]
    assert ranked.widths_after[OUTPUT_LAYER] == ranked.widths_before[OUTPUT_LAYER]


@pytest.mark.parametrize("name", ["cnn-w32", "lstm-2layers", "transformer-w32", "custom_cnn"])
def test_max_layer_ratio_keeps_a_share_of_every_group(name: str) -> None:
    allocation = Allocation(global_ranking=True, max_layer_ratio=0.9)
    net, report = prune_structured(build(name), sample(name), 0.85, importance=L1Importance(),
                                   allocation=allocation)
    for layer, before in report.widths_before.items():
        after = report.widths_after[layer]
        if layer != OUTPUT_LAYER:  # pruned (none refused), but never past the cap
            assert max(1, int(before * 0.1)) <= after < before, (layer, before, after)
    for _, (heads, head_dim) in report.heads_after.items():
        assert heads == 4 and 1 <= head_dim < 8
    with torch.no_grad():
        assert torch.isfinite(net.eval()(sample(name, 2))).all()


def test_tp_alone_still_refuses_a_group_global_ranking_empties() -> None:
    """Why WidthPruner caps scores: drop that once this fails (tp then caps within a step)."""
    net = build("cnn-w32").eval()
    pruner = tp.pruner.BasePruner(
        net, sample("cnn-w32"), importance=L1Importance(), pruning_ratio=0.85,
        global_pruning=True, max_pruning_ratio=0.9,
        ignored_layers=unprunable_layers(net, dependency_graph(net, sample("cnn-w32"))),
        forward_fn=traceable_forward, customized_pruners={nn.LSTM: LSTMPruner()},
        in_channel_groups={}, out_channel_groups={})
    pruner.step()
    assert layer_widths(net)["decoder.0.0"] == 16  # every channel selected: left unpruned


def test_a_cap_equal_to_the_ratio_gives_uniform_widths() -> None:
    _, uniform = prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5,
                                  importance=L1Importance())
    _, capped = prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5,
                                 importance=L1Importance(),
                                 allocation=Allocation(global_ranking=True, max_layer_ratio=0.5))
    assert capped.widths_after == uniform.widths_after


@pytest.mark.parametrize(("allocation", "message"), [
    (Allocation(global_ranking=True, max_layer_ratio=0.4), "exceeds max_layer_ratio"),
    (Allocation(max_layer_ratio=0.0), "max_layer_ratio"),
    (Allocation(layer_ratios={"encoder.0.0": 1.0}), "encoder.0.0"),
])
def test_bad_allocations_raise(allocation: Allocation, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5, importance=L1Importance(),
                         allocation=allocation)


# ----------------------------------------------------------------------------- per-layer ratios


@pytest.mark.parametrize(("name", "asked", "expected"), [
    ("cnn-w32", {"encoder.0.0": 0.25, "decoder.0.0": 0.0},
     {"encoder.0.0": 24, "encoder.1.0": 8, "decoder.0.0": 16, "decoder.1.0": 16}),
    ("lstm-2layers", {"encoder.layers.1": 0.75},
     {"encoder.layers.0": 16, "encoder.layers.1": 8, "decoder.layers.0": 16,
      "decoder.layers.1": 16}),
    ("transformer-w32", {"blocks.0.ffn.fc1": 0.25, "blocks.1.attn.qkv": 0.75},
     {"blocks.0.ffn.fc1": 48, "blocks.1.ffn.fc1": 32, "blocks.0.attn.qkv": 48,
      "blocks.1.attn.qkv": 24, "embed": 16}),
])
def test_layer_ratios_give_the_widths_asked(name: str, asked: dict, expected: dict) -> None:
    _, report = prune_structured(build(name), sample(name), 0.5, importance=L1Importance(),
                                 allocation=Allocation(layer_ratios=asked))
    assert {k: report.widths_after[k] for k in expected} == expected


def test_layer_ratios_with_global_ranking_fix_those_groups_only() -> None:
    asked = {"encoder.0.0": 0.25}
    _, report = prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5,
                                 importance=L1Importance(),
                                 allocation=Allocation(layer_ratios=asked, global_ranking=True))
    widths = report.widths_after
    assert widths["encoder.0.0"] == 24
    assert widths["encoder.1.0"] + widths["decoder.0.0"] + widths["decoder.1.0"] == 32
    assert (widths["encoder.1.0"], widths["decoder.1.0"]) != (8, 16)  # ranked, not uniform


def test_an_unknown_layer_name_lists_the_prunable_ones() -> None:
    with pytest.raises(UnknownLayerError) as err:
        prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5, importance=L1Importance(),
                         allocation=Allocation(layer_ratios={"encoder.0": 0.5}))
    assert err.value.name == "encoder.0"
    assert err.value.allowed == ["encoder.0.0", "encoder.1.0", "decoder.0.0", "decoder.1.0"]
    assert "head" not in str(err.value)  # the output layer is not prunable


def test_layer_ratios_from_a_sensitivity_csv_give_the_widths_it_allows(tmp_path) -> None:
    """The CSV the per-layer analysis writes, read back: each group pruned as far as allowed."""
    name = "cnn-w32"
    net, x = _trained(name), sample(name, 16, seed=9)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(F.mse_loss(m.eval()(x), x))}

    rows = layer_sensitivity(net, sample(name), evaluate, ratios=[0.25, 0.5, 0.75], opset=17)
    csv = write_rows_csv(rows, tmp_path / "layer_sensitivity.csv")
    worse = sorted(r["mse_delta"] for r in rows if r["ratio"] == 0.25)
    tolerance = (worse[1] + worse[2]) / 2 / rows[0]["mse"]  # two groups pass at 0.25, two not

    ratios = ratios_from_sensitivity(csv, "mse", tolerance, cap=0.5)

    assert set(ratios) == {"encoder.0.0", "encoder.1.0", "decoder.0.0", "decoder.1.0"}
    assert sorted(r > 0 for r in ratios.values()) == [False, False, True, True]
    _, report = prune_structured(net, sample(name), 0.5, importance=L1Importance(),
                                 allocation=Allocation(layer_ratios=ratios))
    for group, ratio in ratios.items():
        width = report.widths_before[group]
        assert report.widths_after[group] == int(width * (1 - ratio)), group
