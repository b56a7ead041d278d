"""The baseline cache: one trained baseline per (data, arch, training, seed), reused only then."""

from __future__ import annotations

import pytest
import torch

from tinyexp import cache
from tinyexp.pipeline import baseline_stage, build_datamodule, build_net

pytestmark = pytest.mark.usefixtures("single_thread")

# The data pinned to one seed: only the training seed differs between the runs below.
SMALL = ["trainer=smoke", "dataset.seed=0", "dataset.train_steps=640", "dataset.test_steps=640"]


def _baseline(compose_cfg, tmp_path, *overrides):
    cfg = compose_cfg([*SMALL, f"cache_dir={tmp_path}", *overrides])
    datamodule = build_datamodule(cfg)
    net, info = baseline_stage(build_net(cfg, datamodule), datamodule, cfg)
    return {k: v.clone() for k, v in net.state_dict().items()}, info


def test_each_seed_trains_its_own_baseline_and_the_same_seed_hits(compose_cfg, tmp_path):
    first, info0 = _baseline(compose_cfg, tmp_path, "seed=0")
    other, info1 = _baseline(compose_cfg, tmp_path, "seed=1")
    again, info0b = _baseline(compose_cfg, tmp_path, "seed=0")
    assert [info0["cache"], info1["cache"], info0b["cache"]] == ["miss", "miss", "hit"]
    assert info0["key"] != info1["key"] and info0b["key"] == info0["key"]
    assert any(not torch.equal(first[k], other[k]) for k in first), "seeds gave one baseline"
    assert all(torch.equal(first[k], again[k]) for k in first), "the hit is not the stored net"
    assert len(list((tmp_path / "baselines").iterdir())) == 2


@pytest.mark.parametrize(("override", "same"), [
    ("seed=1", False),
    ("optim.lr=0.01", False),
    ("trainer.max_epochs=3", False),
    ("callbacks.early_stopping.patience=3", False),
    ("arch.channels=[16,8]", False),
    ("dataset.window=64", False),
    ("prune.ratio=0.25", True),   # compression settings do not change the baseline
    ("quant=int8", True),
    ("target=tiny", True),
    ("measure.latency_runs=50", True),
])
def test_key_changes_with_what_decides_the_weights_only(compose_cfg, override, same):
    base = cache.baseline_key(compose_cfg(SMALL))
    assert (cache.baseline_key(compose_cfg([*SMALL, override])) == base) is same


def test_an_entry_without_its_training_info_is_a_miss(compose_cfg, tmp_path):
    # The info file is written last and marks the entry complete: weights alone (a job killed
    # between the two writes) must not be taken for a cached baseline.
    _, info = _baseline(compose_cfg, tmp_path, "seed=0")
    entry = tmp_path / "baselines" / info["key"]
    (entry / "train.json").unlink()
    cfg = compose_cfg([*SMALL, f"cache_dir={tmp_path}", "seed=0"])
    datamodule = build_datamodule(cfg)
    assert cache.load(tmp_path, info["key"], build_net(cfg, datamodule)) is None
    assert [p.name for p in entry.iterdir()] == ["weights.pt"]  # no temp file left behind
