"""The pruning specs: l2, taylor, fpgm, global ranking and per-layer ratios, as a run has them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import TINY, compose

from tinyexp.config import validate
from tinyexp.schemas import ConfigError
from tinyexp.stages.prune import ratios_from_sensitivity

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURES = Path(__file__).resolve().parents[1] / "compress" / "fixtures"
CNN_GROUPS = ["encoder.0.0", "encoder.1.0", "decoder.0.0", "decoder.1.0"]  # default arch=cnn


def _spec(overrides: list[str]):
    return validate(compose(overrides))["prune"]


def _job(overrides: list[str], data: list[str] = ()):
    """A tiny job's config (no fine-tuning), its datamodule and its fresh network."""
    from tinyexp import pipeline

    tiny = [o for o in TINY if not (data and o.startswith("dataset."))]  # sensors' keys
    cfg = compose([*tiny, *data, "prune.finetune_epochs=0", "logger=none", *overrides])
    datamodule = pipeline.build_datamodule(cfg)
    return cfg, datamodule, pipeline.build_net(cfg, datamodule)


def _run(overrides: list[str], tmp_path, data: list[str] = ()):
    """Apply the prune stage of a tiny job to a fresh network: (network, metrics, context)."""
    from tinyexp import pipeline
    from tinyexp.tracking import NullTracker

    cfg, datamodule, net = _job(overrides, data)
    ctx = pipeline.build_context(cfg, datamodule, tmp_path, NullTracker())
    return (*validate(cfg)["prune"].apply(net, ctx), ctx)


def _prune(overrides: list[str], tmp_path, data: list[str] = ()):
    """Apply the prune stage of a tiny job (no fine-tuning) to a fresh network."""
    return _run(overrides, tmp_path, data)[:2]


def _widths(net) -> dict[str, int]:
    from tinyexp.compress.prune import layer_widths

    return layer_widths(net)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("overrides", "message"), [
    (["prune.max_layer_ratio=0"], "prune.max_layer_ratio: must be in (0, 1], got 0.0"),
    (["prune.max_layer_ratio=1.5"], "prune.max_layer_ratio: must be in (0, 1], got 1.5"),
    (["prune.layer_tolerance=-0.1"], "prune.layer_tolerance: must be >= 0, got -0.1"),
    (["prune.layer_ratios=[0.5]"], "prune.layer_ratios: must be null, a mapping {layer: ratio} "
                                   "or the path of a layer_sensitivity.csv, got [0.5]"),
    (["prune.layer_ratios={encoder.0.0: 1.0}"],
     "prune.layer_ratios: 'encoder.0.0' must be a ratio in [0, 1), got 1.0"),
    (["prune.layer_ratios={encoder.0.0: true}"],
     "prune.layer_ratios: 'encoder.0.0' must be a ratio in [0, 1), got True"),
    (["prune.global_ranking=true", "prune.ratio=0.95"],
     "prune.ratio: must be <= prune.max_layer_ratio (0.9) with global_ranking (no group may "
     "lose more), got 0.95"),
    (["prune=l2", "prune.global_ranking=true", "prune.layer_ratios={decoder.0.0: 0.95}"],
     "prune.layer_ratios: must be <= prune.max_layer_ratio (0.9) with global_ranking, got "
     "{'decoder.0.0': 0.95}"),
    (["prune=taylor", "prune.taylor_batches=0"], "prune.taylor_batches: must be an int >= 1, "
                                                 "got 0"),
    (["prune=fpgm", "prune.global_ranking=maybe"], "prune.global_ranking: "),
])
def test_bad_values_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        _spec(overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_defaults_prune_every_group_alike():
    spec = _spec([])
    assert (spec.global_ranking, spec.layer_ratios) == (False, None)
    assert _spec(["prune.ratio=0.95"]).ratio == 0.95  # the cap binds only under global ranking


@pytest.mark.parametrize("option", ["l1", "l2", "taylor", "fpgm", "random"])
def test_every_criterion_is_named_in_the_run(option):
    from tinyexp.config import describe

    assert describe(compose([f"prune={option}"])) == f"sensors-cnn-{option}@0.5-none"


# ----------------------------------------------------------------------------- the CSV rule


def _csv(tmp_path, lines: list[str], metric: str = "mse") -> Path:
    path = tmp_path / "layer_sensitivity.csv"
    path.write_text("\n".join([f"group,width,kept,ratio,{metric}", *lines]) + "\n")
    return path


def test_a_group_takes_the_largest_ratio_within_tolerance_capped_by_ratio(tmp_path):
    path = _csv(tmp_path, [
        "(none),0,0,0.0,1.0",
        "calm,32,24,0.25,1.0", "calm,32,16,0.5,1.01", "calm,32,8,0.75,1.015",
        "steep,32,24,0.25,1.03", "steep,32,16,0.5,1.5",
        "dip,32,24,0.25,1.0", "dip,32,16,0.5,1.5", "dip,32,8,0.75,1.0",  # stops at the first miss
        "better,32,24,0.25,0.5", "better,32,16,0.5,0.4",                  # improvements cost none
        "broken,32,24,0.25,nan",
        "rounded,8,8,0.1,9.0", "rounded,8,4,0.5,1.0",                     # 0.1 removed nothing
        "unprunable,4,4,0.1,9.0",
    ])
    ratios = ratios_from_sensitivity(path, "mse", tolerance=0.02, cap=0.6)
    assert ratios == {"calm": 0.6, "steep": 0.0, "dip": 0.25, "better": 0.5, "broken": 0.0,
                      "rounded": 0.5}
    assert ratios_from_sensitivity(path, "mse", tolerance=0.05, cap=0.9)["steep"] == 0.25


def test_a_higher_is_better_metric_counts_drops(tmp_path):
    path = _csv(tmp_path, ["(none),0,0,0.0,0.9", "a,16,12,0.25,0.89", "a,16,8,0.5,0.8",
                           "b,16,12,0.25,0.95"], metric="accuracy")
    assert ratios_from_sensitivity(path, "accuracy", 0.02, cap=0.9) == {"a": 0.25, "b": 0.25}


@pytest.mark.parametrize(("lines", "message"), [
    (["group,width,kept,ratio", "(none),0,0,0.0"], "has no column mse"),
    (["group,width,kept,ratio,mse", "a,16,8,0.5,1.0"], "has no '(none)' row"),
])
def test_a_csv_of_the_wrong_shape_is_one_line(tmp_path, lines, message):
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"^prune.layer_ratios: .*{re.escape(message)}") as err:
        ratios_from_sensitivity(path, "mse", 0.02, 0.5)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- in a run


@pytest.mark.parametrize("option", ["l2", "taylor", "fpgm"])
def test_each_criterion_prunes_like_l1_but_other_channels(option, tmp_path):
    import torch

    l1, _ = _prune(["prune=l1"], tmp_path)
    pruned, metrics = _prune([f"prune={option}"], tmp_path)
    assert _widths(pruned) == _widths(l1)
    assert metrics["groups_pruned"] > 0 and metrics["ratio_asked"] == 0.5 and "mse" in metrics
    assert all(p.grad is None for p in pruned.parameters())  # Taylor's gradients are dropped
    flat = [torch.cat([p.detach().flatten() for p in n.parameters()]) for n in (l1, pruned)]
    assert not torch.equal(*flat)


def test_taylor_uses_the_classification_loss(tmp_path):
    pruned, metrics = _prune(["prune=taylor"], tmp_path, ["dataset=digits", "arch=custom_cnn"])
    assert _widths(pruned) == {"features.0.0": 8, "features.1.0": 16, "classifier.1": 32,
                               "head": 10}
    assert "accuracy" in metrics


def test_taylor_loss_knows_each_task():
    import torch

    from tinyexp.stages.prune import task_loss

    x = torch.ones(2, 3)
    assert float(task_loss("anomaly")(lambda t: t * 0, x)) == 1.0
    logits = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    assert float(task_loss("classification")(lambda t: logits, (x, torch.tensor([0, 1])))) < 1e-6
    with pytest.raises(ValueError, match="regression"):
        task_loss("regression")


def test_global_ranking_in_a_run(tmp_path):
    uniform, _ = _prune(["prune=l2"], tmp_path)
    ranked, _ = _prune(["prune=l2", "prune.global_ranking=true"], tmp_path)
    assert sum(_widths(ranked)[g] for g in CNN_GROUPS) == sum(_widths(uniform)[g]
                                                               for g in CNN_GROUPS)
    assert _widths(ranked) != _widths(uniform)


def test_layer_ratios_by_hand_in_a_run(tmp_path):
    pruned, _ = _prune(["prune.layer_ratios={encoder.0.0: 0.25, decoder.1.0: 0}"], tmp_path)
    assert [_widths(pruned)[g] for g in CNN_GROUPS] == [24, 8, 8, 32]


def test_layer_ratios_from_a_csv_in_a_run(tmp_path):
    csv = FIXTURES / "layer_sensitivity_cnn.csv"  # encoder.0.0 tolerates 0.25 (within 2 %)
    pruned, _ = _prune([f"prune.layer_ratios={csv}"], tmp_path)
    assert [_widths(pruned)[g] for g in CNN_GROUPS] == [24, 8, 8, 16]
    strict, _ = _prune([f"prune.layer_ratios={csv}", "prune.layer_tolerance=0.01"], tmp_path)
    assert [_widths(strict)[g] for g in CNN_GROUPS] == [32, 8, 8, 16]


@pytest.mark.parametrize(("value", "message"), [
    ("{encoder.0: 0.5}", "prune.layer_ratios: 'encoder.0' is not a prunable layer of this "
                         f"network; allowed: {', '.join(CNN_GROUPS)}"),
    ("/no/such.csv", "prune.layer_ratios: no such file '/no/such.csv' (expected the "
                     "layer_sensitivity.csv of an analysis=layers run)"),
])
def test_layer_names_and_files_are_checked_when_the_network_is_known(value, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        _prune([f"prune.layer_ratios={value}"], tmp_path)
    assert str(err.value) == message


def test_a_csv_for_another_network_names_its_file(tmp_path):
    lines = ["(none),0,0,0.0,0.1", "encoder.layers.0,32,24,0.25,0.1"]
    csv = _csv(tmp_path, lines)
    with pytest.raises(ConfigError, match=rf"^prune.layer_ratios: 'encoder.layers.0' \(in "
                                          rf"{re.escape(str(csv))}\) is not a prunable layer"):
        _prune([f"prune.layer_ratios={csv}"], tmp_path)



# ----------------------------------------------------------------------------- nothing pruned


def test_a_high_ratio_prunes_in_a_run(tmp_path):
    pruned, metrics, ctx = _run(["prune.ratio=0.99"], tmp_path)
    assert [_widths(pruned)[g] for g in CNN_GROUPS] == [1, 1, 1, 1]
    assert metrics["params"] < 12_648 and metrics["groups_unchanged"] == 0
    assert "tinyexp.prune_unchanged" not in ctx.tags


def test_groups_that_kept_their_width_are_recorded(tmp_path, caplog):
    # round_to=16: the 32-wide groups keep 16, the 16-wide ones cannot shrink
    pruned, metrics, ctx = _run(["prune.round_to=16"], tmp_path)
    assert [_widths(pruned)[g] for g in CNN_GROUPS] == [16, 16, 16, 16]
    assert metrics["groups_unchanged"] == 2
    assert ctx.tags["tinyexp.prune_unchanged"] == "encoder.1.0, decoder.0.0"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("2 of 4 groups" in w and "encoder.1.0, decoder.0.0" in w for w in warnings)


def _check(overrides: list[str], data: list[str] = ()):
    """``check_prunes`` as the pre-run check calls it: the untrained network, the example."""
    cfg, datamodule, net = _job(overrides, data)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    validate(cfg)["prune"].check_prunes(net, datamodule.example_input())
    after = net.state_dict()
    assert after.keys() == before.keys() and all(after[k].equal(before[k]) for k in after)


@pytest.mark.parametrize(("overrides", "data"), [
    ([], []), (["prune.ratio=0.99"], []), (["prune.ratio=0.99", "prune.steps=1"], []),
    (["prune.ratio=0"], []), (["prune.round_to=31"], []), (["prune.round_to=16"], []),
    (["prune=taylor", "prune.ratio=0.99"], []), (["prune=random"], []), (["prune=fpgm"], []),
    (["prune=l2", "prune.global_ranking=true", "prune.max_layer_ratio=1", "prune.ratio=0.99"],
     []),
    (["prune.ratio=0", "prune.layer_ratios={encoder.1.0: 0.99}"], []),
    (["arch=lstm", "prune.ratio=0.99"], []), (["arch=transformer", "prune.ratio=0.99"], []),
    (["arch=custom_cnn", "prune=taylor", "prune.ratio=0.99"], ["dataset=digits"]),
])
def test_check_prunes_passes_what_prunes(overrides, data):
    _check(overrides, data)


@pytest.mark.parametrize(("overrides", "message"), [
    (["prune.round_to=1000"], "prune.round_to: 1000 is not below the width of any prunable "
                              "layer (widest: 32 channels): nothing would be pruned; use a value "
                              "<= 31"),
    (["prune.round_to=32", "prune.ratio=0.99"], "prune.round_to: 32 is not below the width of "
                                                "any prunable layer (widest: 32 channels)"),
    (["arch=lstm", "prune.round_to=64"], "prune.round_to: 64 is not below the width of any "
                                         "prunable layer (widest: 32 channels)"),
    (["arch.channels=[1,1]"], "prune.ratio: 0.5 would prune nothing: every prunable layer it "
                              "applies to is 1 channel wide; use prune=none to skip pruning"),
    (["arch.channels=[1,1]", "prune.ratio=0", "prune.layer_ratios={encoder.0.0: 0.5}"],
     "prune.layer_ratios: {'encoder.0.0': 0.5} would prune nothing: every prunable layer it "
     "applies to is 1 channel wide"),
    (["prune.layer_ratios={encoder.0: 0.5}"], "prune.layer_ratios: 'encoder.0' is not a "
                                              "prunable layer of this network; allowed: "),
])
def test_check_prunes_refuses_settings_that_prune_nothing(overrides, message):
    with pytest.raises(ConfigError) as err:
        _check(overrides)
    assert str(err.value).startswith(message)
    assert err.value.key == message.split(":")[0]
    assert "\n" not in str(err.value)
