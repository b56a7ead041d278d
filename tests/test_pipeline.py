"""The orchestrator: prune settings reach the pruned model, the target verdict is right."""

from __future__ import annotations

import onnx
import pytest
from omegaconf import OmegaConf
from support import TINY

from tinyexp.pipeline import fits_target, run

pytestmark = pytest.mark.usefixtures("single_thread")


def _conv_widths(path) -> dict[str, int]:
    """Output channels of every Conv in an ONNX file: the widths the artifact really has."""
    graph = onnx.load(str(path)).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    return {node.input[1]: shapes[node.input[1]][0]
            for node in graph.node if node.op_type == "Conv"}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, single_thread):
    """Two runs pruning at 0.3, one with the defaults and one with steps=2 and round_to=4."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from support import CONF

    out = {}
    cache = tmp_path_factory.mktemp("cache")
    for name, extra in {"default": [], "steps2_round4": ["prune.steps=2", "prune.round_to=4",
                                                          "target=tiny",
                                                          "target.flash_bytes=10000"]}.items():
        folder = tmp_path_factory.mktemp(name)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*TINY, "prune.ratio=0.3", "logger=none",
                                               f"cache_dir={cache}", f"+output_dir={folder}",
                                               *extra])
        GlobalHydra.instance().clear()
        out[name] = (run(cfg), folder)
    return out


def test_round_to_and_steps_reach_the_pruned_model(jobs):
    (default, plain), (stepped, rounded) = jobs["default"], jobs["steps2_round4"]
    before = _conv_widths(plain / "baseline.onnx")
    widths = {"default": _conv_widths(plain / "pruned.onnx"),
              "round4": _conv_widths(rounded / "pruned.onnx")}
    assert all(w % 4 == 0 for w in widths["round4"].values()), widths
    assert any(w % 4 for w in widths["default"].values()), widths  # the premise: 0.3 of 32, 16
    assert widths["round4"] != widths["default"]
    shrunk = {k for k in before if widths["default"][k] < before[k]}
    assert shrunk and all(widths["round4"][k] < before[k] for k in shrunk)
    m1, m2 = default["metrics"], stepped["metrics"]
    assert m1["pruned/steps"] == 1 and m2["pruned/steps"] == 2
    # One fine-tuning epoch after each step (prune.finetune_epochs=1 in TINY).
    assert m1["pruned/finetune_epochs"] == 1 and m2["pruned/finetune_epochs"] == 2
    assert m2["pruned/groups_pruned"] > m1["pruned/groups_pruned"]


def test_the_run_says_whether_each_stage_fits_the_target(jobs):
    default, plain = jobs["default"]
    small, folder = jobs["steps2_round4"]
    text = (plain / "summary.txt").read_text()
    assert "target cortex_m4" in text and "does not fit" not in text
    assert "baseline fits" in text and "pruned fits" in text
    summary = (folder / "summary.txt").read_text()
    # 10,000 B of flash: the float CNN's ONNX file (~50 kB) does not fit, and the run says so.
    assert small["metrics"]["baseline/flash_bytes"] > 10_000
    assert "baseline does not fit" in summary


@pytest.mark.parametrize(("flash", "ram", "fits"), [
    (100, 100, True),     # under both budgets
    (1000, 1000, True),   # exactly at the budget still fits
    (1001, 100, False),   # over the flash budget
    (100, 1001, False),   # over the RAM budget
])
def test_fits_target_compares_both_budgets(flash, ram, fits):
    target = OmegaConf.create({"flash_bytes": 1000, "ram_bytes": 1000})
    metrics = {"pruned/flash_bytes": flash, "pruned/ram_bytes": ram}
    assert fits_target(metrics, "pruned", target) is fits
