"""The baseline cache: one trained baseline per (data, arch, training, seed), reused only then."""

from __future__ import annotations

import math

import pytest
import torch

from tinyexp import cache, tracking
from tinyexp.pipeline import baseline, build_context, build_datamodule, build_net

pytestmark = pytest.mark.usefixtures("single_thread")

# The data pinned to one seed: only the training seed differs between the runs below.
SMALL = ["trainer=smoke", "dataset.seed=0", "dataset.train_steps=640", "dataset.test_steps=640",
         "measure.latency_warmup=1", "measure.latency_runs=5"]


class _Curves(tracking.NullTracker):
    """A tracker that keeps the curves it is given: live epochs, and whole replayed curves."""

    def __init__(self) -> None:
        self.live: dict[str, dict[str, list[float]]] = {}
        self.replayed: dict[str, dict[str, list[float]]] = {}

    def curve_logger(self, stage):
        def log_epoch(epoch, values):
            curve = self.live.setdefault(stage, {name: [] for name in values})
            assert all(len(v) == epoch - 1 for v in curve.values())  # epochs 1, 2, ... in order
            for name, value in values.items():
                curve[name].append(value)

        return log_epoch

    def log_curve(self, stage, curve):
        self.replayed[stage] = curve


def _baseline(compose_cfg, tmp_path, *overrides):
    """The pipeline's baseline stage: its weights, whether the cache hit, its key, its epochs
    and the curves it logged."""
    cfg = compose_cfg([*SMALL, f"cache_dir={tmp_path}", *overrides])
    datamodule = build_datamodule(cfg)
    tracker = _Curves()
    ctx = build_context(cfg, datamodule, tmp_path / "job", tracker)
    net, report = baseline(build_net(cfg, datamodule), ctx, cfg, tracker)
    info = {"cache": ctx.tags["tinyexp.baseline_cache"], "key": ctx.tags["tinyexp.baseline_key"],
            "epochs": report["epochs"], "live": tracker.live, "replayed": tracker.replayed}
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
    # Training logs its curve epoch by epoch; the hit replays the stored one, which it did not
    # train, whole.
    curve = info0["live"]["baseline"]
    assert len(curve["val_loss"]) == len(curve["train_loss"]) == info0["epochs"] > 0
    assert info0["replayed"] == {} and info0b["live"] == {}
    assert info0b["replayed"] == {"baseline": curve} and info0b["epochs"] == info0["epochs"]


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
    ("trainer.resume=never", True),  # resuming changes no weight (tests/test_resume.py)
])
def test_key_changes_with_what_decides_the_weights_only(compose_cfg, override, same):
    base = cache.baseline_key(compose_cfg(SMALL))
    assert (cache.baseline_key(compose_cfg([*SMALL, override])) == base) is same


def test_an_entry_without_its_training_info_is_discarded_and_retrained(compose_cfg, tmp_path,
                                                                       caplog):
    # The info file is written last and marks the entry complete: weights alone (a job killed
    # between the two writes) must not be taken for a cached baseline, nor fail every rerun.
    first, info = _baseline(compose_cfg, tmp_path, "seed=0")
    entry = tmp_path / "baselines" / info["key"]
    (entry / "train.json").unlink()
    again, info2 = _baseline(compose_cfg, tmp_path, "seed=0")
    assert info2["cache"] == "miss" and str(entry) in caplog.text
    assert all(torch.equal(first[k], again[k]) for k in first)  # retrained: the same weights
    assert sorted(p.name for p in entry.iterdir()) == ["train.json", "weights.pt"]
    assert _baseline(compose_cfg, tmp_path, "seed=0")[1]["cache"] == "hit"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "damage"), [
    ("weights.pt", _truncate),
    ("weights.pt", lambda p: p.write_bytes(b"")),
    ("weights.pt", _flip_last_byte),           # loads, but not the bytes that were stored
    ("weights.pt", lambda p: p.unlink()),
    ("train.json", _truncate),
    ("train.json", lambda p: p.write_text("{}")),  # no checksum: not an entry this code wrote
])
def test_a_damaged_entry_is_reported_with_its_path_and_discarded(tmp_path, caplog, name, damage):
    net = torch.nn.Linear(2, 1)
    cache.store(tmp_path, "k", net, {"epochs": 1})
    entry = tmp_path / "baselines" / "k"
    damage(entry / name)
    fresh = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert cache.load(tmp_path, "k", fresh) is None
    assert not entry.exists()
    assert f"baseline cache: {entry} is damaged or incomplete" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # untouched


def test_weights_of_another_network_are_a_damaged_entry(tmp_path, caplog):
    cache.store(tmp_path, "k", torch.nn.Linear(2, 1), {"epochs": 1})
    assert cache.load(tmp_path, "k", torch.nn.Linear(3, 1)) is None
    assert "another network" in caplog.text


def test_the_training_info_round_trips_curve_and_non_finite_values_included(tmp_path):
    info = {"epochs": 3, "best_val_loss": math.inf, "train_seconds": 1.25,
            "curve": {"train_loss": [0.9, 0.1 + 0.2, math.nan], "val_loss": [1.5, 1e-30, 2.0]}}
    net = torch.nn.Linear(2, 1)
    cache.store(tmp_path, "k", net, info)
    loaded = cache.load(tmp_path, "k", torch.nn.Linear(2, 1))
    assert math.isnan(loaded["curve"]["train_loss"].pop())
    info["curve"]["train_loss"].pop()
    assert loaded == info  # floats bit for bit, list order kept
    assert sorted(p.name for p in (tmp_path / "baselines" / "k").iterdir()) == [
        "train.json", "weights.pt"]
