"""How many channels a group keeps: one rule, monotone in the ratio, never all or none."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from nets import build, sample
from torch.nn import functional as F

from tinyexp.compress.prune import Allocation, accumulate_gradients, prune_structured
from tinyexp.compress.sensitivity import prunable_groups
from tinyexp.compress.tp_patches import (
    FPGMImportance,
    L1Importance,
    MagnitudeImportance,
    TaylorImportance,
)
from tinyexp.compress.tp_pruner import WidthPruner, kept_channels
from tinyexp.measure.cost import count_params

OUTPUT_LAYER = "head"
MODELS = {"cnn": "cnn-w32", "lstm": "lstm-2layers", "transformer": "transformer-w32",
          "custom_cnn": "custom_cnn"}
# the default job's shapes (dataset=sensors: 8 channels, window 32), 3 steps as configured
DEFAULT_JOB = {"cnn": "cnn-w32", "lstm": "lstm-w32"}
SWEEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.99]


def _importance(criterion: str, name: str) -> dict:
    """``prune_structured`` keywords for a criterion (Taylor with gradients of a loss)."""
    if criterion == "taylor":
        def loss(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
            y = net(x)
            return F.mse_loss(y, x) if y.shape == x.shape else y.pow(2).mean()

        batches = [sample(name, 4, seed=s) for s in (5, 6)]
        return {"importance": TaylorImportance(),
                "before_step": lambda net: accumulate_gradients(net, batches, loss)}
    return {"importance": {"l1": L1Importance, "l2": lambda: MagnitudeImportance(p=2),
                           "fpgm": FPGMImportance,
                           "random": tp.importance.RandomImportance}[criterion]()}


def _counted_width(net: nn.Module, layer: str) -> int:
    """A group's width as counted: dims per head for attention, else the layer's width."""
    m = net.get_submodule(layer)
    if isinstance(m, nn.LSTM):
        return m.hidden_size
    owner = net.get_submodule(layer.rsplit(".", 1)[0]) if "." in layer else net
    if getattr(owner, "qkv", None) is m:
        return owner.head_dim
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("width", "ratio", "round_to", "kept"), [
    (32, 0.5, None, 16), (32, 0.9, None, 3), (32, 0.93, None, 2), (16, 0.95, None, 1),
    (32, 0.99, None, 1),     # tp: int(0.32) = 0 -> every channel selected -> group refused
    (10, 0.9, None, 1),      # 10 * (1 - 0.9) is 0.9999999999999998 in floats
    (4, 0.01, None, 3),      # any ratio > 0 removes a channel of a group that can lose one
    (1, 0.5, None, 1), (32, 0.0, None, 32),
    (32, 0.6, 4, 12), (32, 0.9, 8, 8), (12, 0.5, 8, 8),  # rounded down, at least round_to
    (8, 0.5, 8, 8), (32, 0.5, 1000, 32),  # not wider than round_to: stays whole
])
def test_kept_channels(width, ratio, round_to, kept) -> None:
    assert kept_channels(width, ratio, round_to) == kept


@pytest.mark.parametrize("round_to", [None, 1, 3, 4, 8])
def test_kept_channels_is_monotone_and_never_empties(round_to) -> None:
    step = round_to or 1
    for width in range(1, 70):
        counts = [kept_channels(width, r / 100, round_to) for r in range(100)]
        assert counts[0] == width
        assert all(a >= b for a, b in pairwise(counts)), width  # never keeps more
        for keep in counts[1:]:
            assert min(width, step) <= keep  # at least the minimum, never 0
            if width > step:  # the width can shrink: every ratio > 0 shrinks it
                assert keep < width and keep % step == 0, (width, keep)
            else:
                assert keep == width


# ----------------------------------------------------------------------------- in a network


@pytest.mark.parametrize("arch", list(DEFAULT_JOB))
def test_a_larger_ratio_never_keeps_more(arch) -> None:
    name = DEFAULT_JOB[arch]
    full = count_params(build(name))
    kept = []
    for ratio in SWEEP:
        net, report = prune_structured(build(name), sample(name), ratio,
                                       importance=L1Importance(), steps=3)
        for group, (width, r) in report.groups.items():
            assert r == ratio and _counted_width(net, group) == kept_channels(width, ratio)
        assert report.groups_unchanged == []
        kept.append(report.params_after)
    assert all(k < full for k in kept), kept
    assert all(a >= b for a, b in pairwise(kept)), list(zip(SWEEP, kept, strict=True))


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "taylor", "random"])
def test_099_prunes_every_group_to_one_channel(criterion, arch) -> None:
    name = MODELS[arch]
    torch.manual_seed(0)  # RandomImportance draws from the global generator
    net, report = prune_structured(build(name), sample(name), 0.99,
                                   **_importance(criterion, name))
    assert list(report.groups) == [g.name for g in prunable_groups(build(name), sample(name))]
    assert all(_counted_width(net, group) == 1 for group in report.groups)
    assert report.groups_unchanged == []
    assert report.widths_after[OUTPUT_LAYER] == report.widths_before[OUTPUT_LAYER]
    assert report.params_after < 0.05 * report.params_before
    with torch.no_grad():
        assert torch.isfinite(net.eval()(sample(name, 2))).all()


@pytest.mark.parametrize("name", ["cnn-w32", "transformer-w32"])
def test_steps_do_not_change_where_a_high_ratio_ends(name) -> None:
    _, one = prune_structured(build(name), sample(name), 0.97, importance=L1Importance())
    _, three = prune_structured(build(name), sample(name), 0.97, importance=L1Importance(),
                                steps=3)
    assert one.widths_after == three.widths_after and one.groups_unchanged == []


def test_layer_ratios_follow_the_rule() -> None:
    asked = {"encoder.0.0": 0.99, "encoder.1.0": 0.95, "decoder.0.0": 0.0}
    net, report = prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5,
                                   importance=L1Importance(), round_to=None,
                                   allocation=Allocation(layer_ratios=asked))
    assert {k: report.widths_after[k] for k in report.groups} == {
        "encoder.0.0": 1, "encoder.1.0": 1, "decoder.0.0": 16, "decoder.1.0": 16}
    assert report.groups["decoder.0.0"] == (16, 0.0)  # asked to stay: not "unchanged"
    assert report.groups_unchanged == []


@pytest.mark.parametrize("name", list(MODELS.values()))
def test_global_ranking_with_round_to_never_empties_a_group(name) -> None:
    _, report = prune_structured(build(name), sample(name), 0.85, importance=L1Importance(),
                                 round_to=4,
                                 allocation=Allocation(global_ranking=True, max_layer_ratio=0.9))
    for layer, before in report.widths_before.items():
        after = report.widths_after[layer]
        if layer != OUTPUT_LAYER:
            assert after % 4 == 0 and 4 <= after < before, (layer, before, after)


# ----------------------------------------------------------------------------- unchanged groups


def test_groups_too_narrow_for_round_to_are_named() -> None:
    # 32-wide groups can keep 16; a 16-wide one cannot shrink and stay a multiple of 16
    _, report = prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.5,
                                 importance=L1Importance(), round_to=16)
    assert report.groups_unchanged == ["encoder.1.0", "decoder.0.0"]
    assert report.widths_after["encoder.0.0"] == report.widths_after["decoder.1.0"] == 16


class _Unscored(L1Importance):
    """Scores every group but the one rooted at ``skip``: an importance may return None."""

    def __init__(self, skip: nn.Module) -> None:
        super().__init__()
        self.skip = skip

    def __call__(self, group):
        return None if group[0].dep.target.module is self.skip else super().__call__(group)


def test_a_group_the_importance_leaves_unscored_is_named() -> None:
    net = build("cnn-w32")
    _, report = prune_structured(net, sample("cnn-w32"), 0.5,
                                 importance=_Unscored(net.encoder[1][0]))
    assert report.groups_unchanged == ["encoder.1.0"]
    assert report.widths_after["encoder.0.0"] == 16 and report.widths_after["encoder.1.0"] == 16


def test_a_one_channel_group_is_named_and_ratio_zero_names_none() -> None:
    from tinyexp.models.cnn import ConvAutoencoder

    net = ConvAutoencoder(in_channels=8, window=32, channels=(4, 1))  # widths 4, 1, 1, 4
    _, report = prune_structured(net, sample("cnn-w32"), 0.5, importance=L1Importance())
    assert report.groups_unchanged == ["encoder.1.0", "decoder.0.0"]
    _, none = prune_structured(build("cnn-w32"), sample("cnn-w32"), 0.0,
                               importance=L1Importance(), round_to=1000)
    assert none.groups_unchanged == [] and none.groups_pruned == 0


def test_width_pruner_refuses_what_it_does_not_count() -> None:
    net = build("cnn-w32")
    with pytest.raises(NotImplementedError, match="head dims"):
        WidthPruner(net, sample("cnn-w32"), importance=L1Importance(), prune_num_heads=True)
