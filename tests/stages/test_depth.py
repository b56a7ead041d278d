"""``prune=depth`` and ``analysis=depth``: the specs check their keys, refuse a network they
cannot cut before anything trains, and apply: cut, train the head (kept blocks frozen), measure;
or try every cut and report the table, the plot and the best cut."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from support import CONF, compose

from tinyexp.config import check_stage, describe, validate
from tinyexp.schemas import ConfigError
from tinyexp.stages.base import Context
from tinyexp.stages.depth import UNCUT, DepthAnalysis, DepthPrune, best_cut

pytestmark = pytest.mark.usefixtures("single_thread")

PRUNE = "tinyexp.stages.depth.DepthPrune"
ANALYSIS = "tinyexp.stages.depth.DepthAnalysis"


def _blocknet():
    """The zoo's contract in miniature (tests/compress/test_depth.py has the varied one): a
    stem, 4 conv-BN-ReLU blocks of 16, 16, 24, 32 channels, pooling + linear over 5 classes."""
    import torch
    from torch import nn

    class BlockNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_classes = 5

            def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
                return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                     nn.BatchNorm2d(cout), nn.ReLU())

            self.stem = block(3, 8)
            self.blocks = nn.Sequential(block(8, 16, 2), block(16, 16), block(16, 24),
                                        block(24, 32, 2))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(self.stem(x)))

    torch.manual_seed(0)
    return BlockNet()


# ----------------------------------------------------------------------------- the specs


def test_the_yamls_build_the_specs_and_name_the_run():
    prune = check_stage("prune", OmegaConf.load(CONF / "prune" / "depth.yaml"))
    analysis = check_stage("analysis", OmegaConf.load(CONF / "analysis" / "depth.yaml"))
    assert prune == DepthPrune() and analysis == DepthAnalysis()
    assert (prune.prefix, prune.yields_model) == ("pruned", True)
    assert (analysis.prefix, analysis.yields_model) == ("depth", False)
    assert DepthPrune(cut=3).label() == "depth@3"
    assert describe(compose(["prune=depth", "prune.cut=3"])) == "sensors-cnn-depth@3-none"


@pytest.mark.parametrize(("group", "values", "message"), [
    ("prune", {"cut": 0}, "prune.cut: must be an int >= 1 (the block to cut after) or null, "
                          "got 0"),
    ("prune", {"head_width": 0}, "prune.head_width: must be null (the channels at the cut) or "
                                 "an int >= 1, got 0"),
    ("prune", {"head_convs": -1}, "prune.head_convs: must be an int >= 0 (0: pooling and a "
                                  "linear classifier only), got -1"),
    ("prune", {"head_epochs": -1}, "prune.head_epochs: must be an int >= 0, got -1"),
    ("prune", {"finetune_epochs": -2}, "prune.finetune_epochs: must be an int >= 0, got -2"),
    ("prune", {"head_epochs": 0, "finetune_epochs": 0},
     "prune.head_epochs: must be >= 1 when prune.finetune_epochs is 0: an untrained head "
     "guesses"),
    ("prune", {"lr": 0.0}, "prune.lr: must be null (the run's) or a number > 0, got 0.0"),
    ("prune", {"freeze": "maybe"}, "prune.freeze: "),
    ("prune", {"ratio": 0.5}, "prune.ratio: unknown key for prune=depth; allowed: name, cut, "
                              "head_width, head_convs, freeze, head_epochs, finetune_epochs, lr"),
    ("analysis", {"cuts": []}, "analysis.cuts: must be null (every cut) or a non-empty list of "
                               "distinct ints >= 1, got []"),
    ("analysis", {"cuts": [0, 2]}, "analysis.cuts: must be null (every cut) or a non-empty "
                                   "list of distinct ints >= 1, got [0, 2]"),
    ("analysis", {"cuts": [2, 2]}, "analysis.cuts: must be null (every cut) or a non-empty "
                                   "list of distinct ints >= 1, got [2, 2]"),
    ("analysis", {"head_width": -3}, "analysis.head_width: must be null"),
    ("analysis", {"head_convs": -1}, "analysis.head_convs: must be an int >= 0"),
    ("analysis", {"head_epochs": 0}, "analysis.head_epochs: must be an int >= 1 (an untrained "
                                     "head guesses), got 0"),
    ("analysis", {"tolerance": -0.1}, "analysis.tolerance: must be >= 0, got -0.1"),
])
def test_bad_values_are_one_line_errors_naming_the_key(group, values, message):
    target = PRUNE if group == "prune" else ANALYSIS
    with pytest.raises(ConfigError) as err:
        check_stage(group, OmegaConf.create({"_target_": target, "name": "depth", **values}))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_config_check_passes_what_only_the_network_can_refuse():
    """Validation sees no network: whether the arch has blocks, and the null cut, are for
    check_prunes (run before anything trains)."""
    assert validate(compose(["prune=depth"]))["prune"].cut is None
    assert validate(compose(["prune=none", "analysis=depth"]))["analysis"].cuts is None


# ----------------------------------------------------------------------------- check_prunes


def test_a_network_without_blocks_is_refused_before_the_run_trains():
    from tinyexp import pipeline

    cfg = compose(["prune=depth", "prune.cut=2", "logger=none", "dataset.train_steps=640",
                   "dataset.test_steps=640"])
    with pytest.raises(ConfigError) as err:
        pipeline.check_before_run(cfg, validate(cfg))
    assert str(err.value) == (
        "prune.cut: prune=depth needs an architecture made of blocks (resnet, mobilenet_v1, "
        "mobilenet_v2, vgg, ds_cnn); arch=cnn (ConvAutoencoder) has none")


@pytest.mark.parametrize(("spec", "message"), [
    (DepthPrune(cut=None), "prune.cut: is null: which cut keeps the accuracy depends on the "
                           "network and the data; run analysis=depth prune=none to measure "
                           "every cut, then set prune.cut to its depth/best_cut, in 1..3 for "
                           "BlockNet"),
    (DepthPrune(cut=4), "prune.cut: 4 must be in 1..3: BlockNet has 4 blocks, and cutting "
                        "after the last one removes none"),
    (DepthAnalysis(cuts=[1, 7]), "analysis.cuts: 7 must be in 1..3: BlockNet has 4 blocks"),
])
def test_a_cut_the_network_does_not_have_is_refused(spec, message):
    with pytest.raises(ConfigError) as err:
        spec.check_prunes(_blocknet(), None)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    DepthPrune(cut=3).check_prunes(_blocknet(), None)
    DepthAnalysis().check_prunes(_blocknet(), None)


# ----------------------------------------------------------------------------- apply


# accuracy of the fake evaluation by the number of blocks a network has: 4 = uncut
ACCURACY = {4: 0.90, 3: 0.895, 2: 0.891, 1: 0.70}


class FakeRun:
    """A context whose ``fit`` runs a few real Adam steps on random data over all parameters
    (as tinyexp.lit does) and records what the frozen part and the head did."""

    def __init__(self, out_dir: Path) -> None:
        import torch

        torch.manual_seed(0)
        self.x, self.y = torch.randn(16, 3, 16, 16), torch.arange(16) % 5
        self.fits: list[dict] = []
        self.measured: list[str] = []
        self.ctx = Context(
            datamodule=None, example=self.x[:1], calibration=None, fit=self.fit,
            evaluate=self.evaluate, measure_float=self.measure_float, measure_artifact=None,
            task_metrics=None, timing={}, sensitivity_metric="accuracy", opset=17,
            out_dir=out_dir)

    def fit(self, net, stage, max_epochs, searched=True, lr=None):
        import torch

        kept = [p.clone() for p in [*net.stem.parameters(), *net.blocks.parameters()]]
        stats = [b.clone() for b in net.blocks.buffers()]
        head = [p.clone() for p in net.head.parameters()]
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr or 0.01)
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(net(self.x), self.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        now = [*net.stem.parameters(), *net.blocks.parameters()]
        self.fits.append({
            "stage": stage, "epochs": max_epochs, "searched": searched, "lr": lr,
            "kept_unchanged": all(torch.equal(a, b) for a, b in zip(kept, now, strict=True)),
            "stats_unchanged": all(torch.equal(a, b) for a, b in
                                   zip(stats, net.blocks.buffers(), strict=True)),
            "head_changed": all(not torch.equal(a, b) for a, b in
                                zip(head, net.head.parameters(), strict=True))})
        return {"epochs": max_epochs - 1}  # as if early stopping ended it an epoch sooner

    def evaluate(self, net):
        return {"accuracy": ACCURACY[len(net.blocks)], "f1": 0.5}

    def measure_float(self, net, name):
        from tinyexp.measure.cost import count_params

        self.measured.append(name)
        return {**self.evaluate(net), "params": count_params(net)}


def test_depth_prune_freezes_for_the_head_then_fine_tunes_everything(tmp_path):
    net, run = _blocknet(), FakeRun(tmp_path)
    spec = DepthPrune(cut=2, head_width=12, head_epochs=3, finetune_epochs=2, lr=0.05)
    cut, metrics = spec.apply(net, run.ctx)
    assert len(cut.blocks) == 2 and cut(run.x).shape == (16, 5)
    head, tune = run.fits
    assert (head["stage"], head["epochs"], head["lr"]) == ("depth_head", 3, 0.05)
    assert head["kept_unchanged"] and head["stats_unchanged"] and head["head_changed"]
    assert (tune["stage"], tune["epochs"]) == ("depth_finetune", 2)
    assert not tune["kept_unchanged"]  # thawed: the whole network trained
    assert not cut.frozen and all(p.requires_grad for p in cut.parameters())
    assert run.measured == ["pruned"]
    assert metrics == {"accuracy": 0.891, "f1": 0.5, "params": metrics["params"], "cut": 2,
                       "blocks_kept": 2, "blocks_total": 4, "head_epochs": 2,
                       "finetune_epochs": 1, "epochs": 3}


def test_depth_prune_without_freezing_or_fine_tuning(tmp_path):
    run = FakeRun(tmp_path)
    _, metrics = DepthPrune(cut=1, freeze=False, finetune_epochs=0).apply(_blocknet(), run.ctx)
    assert [f["stage"] for f in run.fits] == ["depth_head"]
    assert not run.fits[0]["kept_unchanged"]
    assert (metrics["head_epochs"], metrics["finetune_epochs"], metrics["epochs"]) == (29, 0, 29)


def test_depth_analysis_tries_every_cut_and_reports_the_smallest_within_tolerance(tmp_path,
                                                                                    capsys):
    import torch

    from tinyexp.measure.cost import count_params

    net, run = _blocknet(), FakeRun(tmp_path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out, metrics = DepthAnalysis(head_epochs=2).apply(net, run.ctx)
    assert out is net and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert [(f["stage"], f["epochs"], f["searched"]) for f in run.fits] == [
        ("depth_cut1", 2, False), ("depth_cut2", 2, False), ("depth_cut3", 2, False)]
    assert all(f["kept_unchanged"] and f["stats_unchanged"] for f in run.fits)

    with open(tmp_path / "depth_analysis.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["cut"] for r in rows] == [UNCUT, "1", "2", "3"]
    assert list(rows[0]) == ["cut", "blocks_kept", "blocks_total", "channels", "params",
                             "params_ratio", "accuracy", "f1", "accuracy_delta", "head_epochs"]
    assert [int(r["channels"]) for r in rows] == [32, 16, 16, 24]
    assert int(rows[0]["params"]) == count_params(net) and float(rows[0]["params_ratio"]) == 1
    assert float(rows[2]["accuracy_delta"]) == pytest.approx(-0.009)
    assert (tmp_path / "depth_analysis.png").read_bytes().startswith(b"\x89PNG")
    assert run.ctx.artifacts == [(tmp_path / "depth_analysis.csv", "depth_analysis"),
                                 (tmp_path / "depth_analysis.png", "depth_analysis")]

    assert metrics["best_cut"] == 2 and run.ctx.tags == {"tinyexp.depth_best_cut": "2"}
    params = [metrics[f"cut{k}_params"] for k in (1, 2, 3)]
    assert params == sorted(params) and params[-1] < count_params(net)
    assert metrics["cut2_accuracy"] == 0.891
    assert metrics["cut1_accuracy_delta"] == pytest.approx(-0.2)
    assert metrics["cut3_params_ratio"] == pytest.approx(params[-1] / count_params(net))
    assert len(metrics) == 1 + 4 * 3
    table = capsys.readouterr().out
    assert "best cut: 2" in table and "cut after 2 (best)" in table


def test_depth_analysis_names_no_best_cut_when_none_is_close_enough(tmp_path):
    run = FakeRun(tmp_path)
    _, metrics = DepthAnalysis(cuts=[3, 1], head_epochs=1, tolerance=0.001).apply(
        _blocknet(), run.ctx)
    assert [f["stage"] for f in run.fits] == ["depth_cut1", "depth_cut3"]
    assert "best_cut" not in metrics and run.ctx.tags == {"tinyexp.depth_best_cut": "none"}
    assert sorted(metrics) == sorted(f"cut{k}_{m}" for k in (1, 3) for m in (
        "accuracy", "accuracy_delta", "params", "params_ratio"))


def _rows(*cuts: tuple) -> list[dict]:
    return [{"cut": c, "params": p, "accuracy": a, "mse": a} for c, p, a in cuts]


@pytest.mark.parametrize(("rows", "tolerance", "lower", "best"), [
    (_rows((UNCUT, 100, 0.9), (1, 10, 0.8), (2, 30, 0.89), (3, 60, 0.95)), 0.01, False, 2),
    (_rows((UNCUT, 100, 0.93), (1, 10, 0.92)), 0.01, False, 1),  # exactly the tolerance
    (_rows((UNCUT, 100, 0.9), (1, 10, float("nan")), (2, 30, 0.5)), 0.01, False, None),
    (_rows((UNCUT, 100, 0.9), (1, 10, 0.8), (2, 30, 0.5)), 0.2, False, 1),
    (_rows((UNCUT, 100, 0.10), (1, 10, 0.2), (2, 30, 0.105)), 0.01, True, 2),  # mse: lower
    (_rows((UNCUT, 100, 0.9), (2, 10, 0.9), (1, 10, 0.9)), 0.0, False, 1),  # a tie: earlier
])
def test_the_best_cut_is_the_smallest_network_within_the_tolerance(rows, tolerance, lower, best):
    metric = "mse" if lower else "accuracy"
    assert best_cut(rows, metric, tolerance, lower) == best


# ----------------------------------------------------------------------------- a real job


def test_a_tiny_job_cuts_a_zoo_network_and_trains_only_its_head(tmp_path):
    """Through the pipeline's own context (Lightning fit, ONNX measuring) on real data."""
    import torch

    from tinyexp import pipeline
    from tinyexp.tracking import NullTracker

    if not (CONF / "arch" / "resnet.yaml").is_file():
        pytest.skip("no arch=resnet yet")
    cfg = compose(["dataset=digits", "arch=resnet", "prune=depth", "prune.cut=2",
                   "prune.head_epochs=1", "prune.finetune_epochs=0", "trainer=smoke",
                   "logger=none", "measure.latency_warmup=1", "measure.latency_runs=5",
                   f"cache_dir={tmp_path / 'cache'}"])
    specs = validate(cfg)
    pipeline.check_before_run(cfg, specs)
    datamodule = pipeline.build_datamodule(cfg)
    net = pipeline.build_net(cfg, datamodule)
    ctx = pipeline.build_context(cfg, datamodule, tmp_path, NullTracker())
    cut, metrics = specs["prune"].apply(net, ctx)
    kept = {k: v for k, v in cut.state_dict().items() if not k.startswith("head")}
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in kept.items())  # BN stats too
    assert (metrics["cut"], metrics["blocks_total"], metrics["head_epochs"]) == (2, 3, 1)
    assert metrics["params"] < 0.5 * sum(p.numel() for p in net.parameters())
    assert {"accuracy", "macs", "size_bytes", "latency_ms"} <= set(metrics)
    assert (tmp_path / "pruned.onnx").is_file()


def test_the_spec_module_imports_nothing_heavy():
    code = ("import sys, tinyexp.stages.depth; print(sorted(m for m in ('torch', "
            "'pytorch_lightning', 'torch_pruning', 'onnx', 'mlflow', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
