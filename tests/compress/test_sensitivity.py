"""Sensitivity analysis prunes one dependency group at a time and never touches the model."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import nets
import pytest
import torch
import torch.nn as nn

from tinyexp.compress.prune import layer_widths, prune_structured
from tinyexp.compress.sensitivity import (
    PrunableGroup,
    _prune_group,
    layer_sensitivity,
    prunable_groups,
)
from tinyexp.compress.tp_patches import L1Importance
from tinyexp.measure.cost import count_params, export_onnx, onnx_macs
from tinyexp.models.cnn import ConvAutoencoder

OPSET = 17

# this module's names for the default architectures (series ones on a 32-step window)
ARCHS = {"cnn": "cnn-w32", "lstm": "lstm-w32", "transformer": "transformer-w32",
         "custom_cnn": "custom_cnn"}
# the groups of each default architecture: root name -> layers whose output width shrinks
GROUPS: dict[str, dict[str, list[str]]] = {
    "cnn": {
        "encoder.0.0": ["encoder.0.0"],
        "encoder.1.0": ["encoder.1.0"],
        "decoder.0.0": ["decoder.0.0"],
        "decoder.1.0": ["decoder.1.0"],
    },
    "lstm": {
        "encoder.layers.0": ["encoder.layers.0"],
        "decoder.layers.0": ["decoder.layers.0"],
    },
    "transformer": {
        # the residual stream: everything that writes it is one coupled group
        "embed": [
            "embed", "blocks.0.attn.proj", "blocks.0.ffn.fc2",
            "blocks.1.attn.proj", "blocks.1.ffn.fc2",
        ],
        "blocks.0.attn.qkv": ["blocks.0.attn.qkv"],
        "blocks.0.ffn.fc1": ["blocks.0.ffn.fc1"],
        "blocks.1.attn.qkv": ["blocks.1.attn.qkv"],
        "blocks.1.ffn.fc1": ["blocks.1.ffn.fc1"],
    },
    "custom_cnn": {
        "features.0.0": ["features.0.0"],
        "features.1.0": ["features.1.0"],
        "classifier.1": ["classifier.1"],
    },
}
OUTPUT_LAYER = "head"  # every model names its output layer `head`


def build(name: str, seed: int = 0) -> nn.Module:
    return nets.build(ARCHS[name], seed)


def sample(name: str, n: int = 1, seed: int = 1) -> torch.Tensor:
    return nets.sample(ARCHS[name], n, seed)


def mse_to_reference(net: nn.Module, x: torch.Tensor) -> Callable[[nn.Module], dict[str, float]]:
    """Deterministic metric: MSE between a model's output and the unpruned ``net``'s on ``x``."""
    was_training = net.training
    with torch.no_grad():
        reference = net.eval()(x)
    net.train(was_training)

    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        with torch.no_grad():
            return {"mse": float((m(x) - reference).pow(2).mean())}

    return evaluate


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_unchanged(net: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = net.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k


# ----------------------------------------------------------------------------- groups


def test_prunable_groups_of_the_cnn() -> None:
    net = build("cnn")
    groups = prunable_groups(net, sample("cnn"))

    assert all(isinstance(g, PrunableGroup) for g in groups)
    assert [g.name for g in groups] == ["encoder.0.0", "encoder.1.0", "decoder.0.0", "decoder.1.0"]
    assert [g.width for g in groups] == [32, 16, 16, 32]
    modules = dict(net.named_modules())
    for g in groups:
        assert g.layers == [g.name]
        assert isinstance(modules[g.name], nn.modules.conv._ConvNd)
    assert all(OUTPUT_LAYER not in g.layers for g in groups)  # it fixes the output shape
    assert net.training  # mode restored after tracing


@pytest.mark.parametrize("name", list(ARCHS))
def test_groups_partition_what_pruning_shrinks(name: str) -> None:
    net = build(name)
    groups = prunable_groups(net, sample(name))

    assert {g.name: g.layers for g in groups} == GROUPS[name]
    assert [g.name for g in groups] == list(GROUPS[name])  # network order
    widths = layer_widths(net)
    modules = dict(net.named_modules())
    for g in groups:
        assert g.layers[0] == g.name and g.width == widths[g.name]
        assert all(layer in modules for layer in g.layers)
    layers = [layer for g in groups for layer in g.layers]
    assert len(layers) == len(set(layers))  # disjoint
    _, report = prune_structured(build(name), sample(name), ratio=0.5, importance=L1Importance())
    shrunk = {k for k, w in report.widths_after.items() if w != report.widths_before[k]}
    assert set(layers) == shrunk


# ----------------------------------------------------------------------------- sensitivity


def test_layer_sensitivity_on_the_cnn(tmp_path) -> None:
    name = "cnn"
    net = build(name)  # train mode, as built
    x, example = sample(name, 4), sample(name)
    evaluate = mse_to_reference(net, x)
    before = snapshot(net)
    ratios = [0.25, 0.5]

    rows = layer_sensitivity(net, example, evaluate, ratios, opset=OPSET)

    assert_unchanged(net, before)
    assert net.training
    groups = prunable_groups(net, example)
    assert len(rows) == 1 + len(groups) * len(ratios)

    base = rows[0]
    assert base["group"] == "(none)" and base["ratio"] == 0.0
    assert base["mse_delta"] == 0.0
    assert base["params"] == count_params(net)
    assert base["macs"] == onnx_macs(export_onnx(net, example, tmp_path / "cnn.onnx",
                                                 opset=OPSET))
    keys = {"group", "layers", "width", "kept", "ratio", "params", "macs", "mse", "mse_delta"}
    assert all(set(row) == keys for row in rows)

    expected_order = [(g.name, r) for g in groups for r in ratios]
    assert [(row["group"], row["ratio"]) for row in rows[1:]] == expected_order
    for row, (group, ratio) in zip(rows[1:], [(g, r) for g in groups for r in ratios],
                                   strict=True):
        assert row["layers"] == "+".join(group.layers)
        assert row["width"] == group.width
        assert row["kept"] < row["width"]
        if ratio == 0.5:
            assert row["kept"] == group.width // 2
        assert row["params"] < base["params"] and row["macs"] < base["macs"]
        assert row["mse_delta"] == pytest.approx(row["mse"] - base["mse"])
        assert row["mse"] > 0.0  # removing channels of a random net changes its output

        # re-prune independently: only this group's width changed, and to `kept`
        pruned = _prune_group(copy.deepcopy(net), example, group, ratio)
        widths_before, widths_after = layer_widths(net), layer_widths(pruned)
        changed = {k for k, w in widths_after.items() if w != widths_before[k]}
        assert changed == {group.name}
        assert widths_after[group.name] == row["kept"]
        assert row["params"] == count_params(pruned)
    # a larger ratio keeps fewer channels
    by_group = {}
    for row in rows[1:]:
        by_group.setdefault(row["group"], []).append(row)
    for quarter, half in by_group.values():
        assert half["kept"] < quarter["kept"] and half["params"] < quarter["params"]


@pytest.mark.parametrize("name", ["lstm", "transformer", "custom_cnn"])
def test_layer_sensitivity_on_other_architectures(name: str) -> None:
    net = build(name).eval()
    x, example = sample(name, 4), sample(name)
    before = snapshot(net)
    ratios = [0.5]

    rows = layer_sensitivity(net, example, mse_to_reference(net, x), ratios, opset=OPSET)

    assert_unchanged(net, before)
    assert not net.training
    assert len(rows) == 1 + len(GROUPS[name]) * len(ratios)
    assert [row["group"] for row in rows] == ["(none)", *GROUPS[name]]
    base = rows[0]
    assert base["mse_delta"] == 0.0
    for row in rows[1:]:
        assert row["kept"] < row["width"], row["group"]
        assert row["params"] < base["params"] and row["macs"] < base["macs"], row["group"]
        assert math.isfinite(row["mse"]) and row["mse_delta"] == pytest.approx(
            row["mse"] - base["mse"]
        )


def test_macs_are_the_onnx_artifacts(tmp_path) -> None:
    # one MAC counter: the reference row is what the pipeline logs as baseline/macs (the
    # transformer's attention products included), and each row is its pruned copy's export
    name = "transformer"
    net, example = build(name).eval(), sample(name)
    rows = layer_sensitivity(net, example, lambda m: {}, [0.5], opset=OPSET)

    assert rows[0]["macs"] == onnx_macs(export_onnx(net, example, tmp_path / "t.onnx",
                                                    opset=OPSET))
    group = prunable_groups(net, example)[0]
    pruned = _prune_group(copy.deepcopy(net), example, group, 0.5)
    assert rows[1]["group"] == group.name
    assert rows[1]["macs"] == onnx_macs(export_onnx(pruned, example, tmp_path / "p.onnx",
                                                    opset=OPSET))


def test_rows_follow_pruning_rounding() -> None:
    # a group keeps floor(width * (1 - ratio)) channels, at least 1 (kept_channels): any ratio
    # removes at least one, and a ratio that would keep none keeps 1 (it used to keep all)
    net = ConvAutoencoder(in_channels=nets.C, window=32, channels=(4, 2))  # widths 4, 2, 2, 4
    for ratio, kept in [(0.01, [3, 1, 1, 3]), (0.6, [1, 1, 1, 1]), (0.9, [1, 1, 1, 1])]:
        rows = layer_sensitivity(net, sample("cnn"), lambda m: {"n": 1.0}, [ratio], opset=OPSET)
        assert len(rows) == 1 + 4
        assert [row["kept"] for row in rows[1:]] == kept
        for row in rows[1:]:
            assert (row["params"] < rows[0]["params"]) == (row["kept"] < row["width"])
            assert row["n_delta"] == 0.0


def test_finetune_is_called_once_per_group_and_ratio() -> None:
    name = "cnn"
    net = build(name).eval()
    example = sample(name)
    before = snapshot(net)
    base_params = count_params(net)
    seen: list[int] = []
    modes: list[bool] = []

    def finetune(m: nn.Module) -> None:
        seen.append(count_params(m))
        m.train()  # like real training; the copy is put back into net's mode afterwards
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)  # changes the copy only

    def evaluate(m: nn.Module) -> dict[str, float]:
        modes.append(m.training)
        return {"p": float(count_params(m))}

    ratios = [0.25, 0.5]
    rows = layer_sensitivity(net, example, evaluate, ratios, finetune=finetune, opset=OPSET)

    n_groups = len(GROUPS[name])
    assert len(seen) == n_groups * len(ratios)
    assert all(p < base_params for p in seen)  # finetune sees the pruned copy
    assert [row["params"] for row in rows[1:]] == seen
    assert modes == [False] * (1 + n_groups * len(ratios))  # net's (eval) mode
    assert_unchanged(net, before)


@pytest.mark.parametrize("ratios", [[0.0], [1.0], [0.5, -0.1], [1.5], [float("nan")]])
def test_bad_ratio_raises(ratios: list[float]) -> None:
    calls: list[nn.Module] = []
    with pytest.raises(ValueError, match="ratio"):
        layer_sensitivity(build("cnn"), sample("cnn"), lambda m: calls.append(m) or {}, ratios,
                          opset=OPSET)
    assert not calls  # validated before any work


def test_reserved_metric_name_raises() -> None:
    with pytest.raises(ValueError, match="reserved"):
        layer_sensitivity(build("cnn"), sample("cnn"), lambda m: {"params": 1.0}, [0.5],
                          opset=OPSET)
