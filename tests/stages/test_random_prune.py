"""``prune=random``: the widths of l1 at the same ratio, other channels, fixed by the seed."""

from __future__ import annotations

import pytest
import torch
from support import TINY, compose

from tinyexp import pipeline
from tinyexp.compress.prune import layer_widths
from tinyexp.config import validate
from tinyexp.tracking import NullTracker

pytestmark = pytest.mark.usefixtures("single_thread")


def _prune(criterion: str, seed: int, tmp_path):
    cfg = compose([*TINY, f"prune={criterion}", "prune.finetune_epochs=0", "logger=none"])
    data = pipeline.build_datamodule(cfg)
    net = pipeline.build_net(cfg, data)
    ctx = pipeline.build_context(cfg, data, tmp_path, NullTracker())
    torch.manual_seed(seed)
    pruned, metrics = validate(cfg)["prune"].apply(net, ctx)
    weights = torch.cat([p.detach().flatten() for p in pruned.parameters()])
    return layer_widths(pruned), weights, metrics


def test_random_pruning_keeps_l1s_widths_but_other_channels(tmp_path):
    l1_widths, l1_weights, l1 = _prune("l1", 0, tmp_path)
    widths, weights, metrics = _prune("random", 0, tmp_path)
    assert widths == l1_widths  # the same ratio of every group goes
    assert metrics["params"] == l1["params"] < 12_648 and metrics["groups_pruned"] > 0
    assert not torch.equal(weights, l1_weights)  # ... but not the same channels
    assert metrics["ratio_asked"] == 0.5 and "mse" in metrics  # measured like any stage


def test_random_pruning_is_fixed_by_the_seed(tmp_path):
    _, first, _ = _prune("random", 0, tmp_path)
    _, again, _ = _prune("random", 0, tmp_path)
    _, other, _ = _prune("random", 1, tmp_path)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
