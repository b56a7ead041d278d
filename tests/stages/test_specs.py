"""Stage options are spec classes named by ``_target_``: one place for keys, defaults and checks."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf
from support import CONF, compose

from tinyexp.config import STAGE_GROUPS, check_stage, describe, validate
from tinyexp.schemas import ConfigError
from tinyexp.stages.base import Stage

BASE_OPTIONS = [(g, f.stem) for g in STAGE_GROUPS for f in sorted((CONF / g).glob("*.yaml"))
                if "defaults" not in (yaml.safe_load(f.read_text()) or {}) and f.stem != "none"]


@pytest.mark.parametrize(("group", "option"), BASE_OPTIONS, ids=[f"{g}={o}" for g, o in
                                                                  BASE_OPTIONS])
def test_each_option_yaml_holds_its_spec_class_defaults(group, option):
    """The YAML shows the keys and values a user overrides; the class is the schema. They
    must agree, so a spec object built in code runs what the shipped option runs."""
    raw = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
    spec = check_stage(group, OmegaConf.create(raw))
    fields = {f.name for f in dataclasses.fields(spec)}
    assert set(raw) - {"_target_"} == fields, f"{group}={option}: YAML keys != spec fields"
    assert dataclasses.asdict(type(spec)()) == dataclasses.asdict(spec)


@pytest.mark.parametrize("group", STAGE_GROUPS)
def test_none_is_a_null_group(group):
    cfg = compose([f"{group}=none"])
    assert cfg[group] is None
    assert validate(cfg)[group] is None


def test_the_run_name_comes_from_the_specs():
    assert describe(compose(["quant=w4a8"])) == "sensors-cnn-l1@0.5-qat-w4a8"
    assert describe(compose(["prune=none", "quant=int8"])) == "sensors-cnn-none-int8"
    assert describe(compose(["prune.ratio=0.25"])) == "sensors-cnn-l1@0.25-none"


@pytest.mark.parametrize(("target", "message"), [
    ("tinyexp.stages.prune.Nope", "prune._target_: cannot import 'tinyexp.stages.prune.Nope'"),
    ("nowhere.Prune", "prune._target_: cannot import 'nowhere.Prune'"),
    ("tinyexp.schemas.Target", "prune._target_: 'tinyexp.schemas.Target' is not a stage spec"),
    ("L1Prune", "prune._target_: must name the stage's spec class"),
])
def test_a_bad_target_is_one_line_naming_the_key(target, message):
    cfg = compose([f"prune._target_={target}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_keys_and_bad_values_are_caught_by_the_spec_class():
    allowed = ("name, ratio, steps, finetune_epochs, round_to, global_ranking, "
               "max_layer_ratio, layer_ratios, layer_tolerance")
    with pytest.raises(ConfigError, match=rf"^prune.foo: unknown key for prune=l1; allowed: "
                                          rf"{allowed}$"):
        validate(compose(["+prune.foo=1"]))
    with pytest.raises(ConfigError, match=r"^quant.format: must be qdq for quant=int16x8"):
        validate(compose(["quant=int16x8", "quant.format=qoperator"]))
    with pytest.raises(ConfigError, match=r"^analysis.ratios: must be a non-empty list"):
        validate(compose(["analysis=layers", "analysis.ratios=[1.5]"]))


def test_spec_modules_import_nothing_heavy():
    """Validation runs before torch is loaded: the spec modules import the standard library."""
    import subprocess
    import sys

    code = ("import sys, tinyexp.stages.prune, tinyexp.stages.quant, tinyexp.stages.analysis, "
            "tinyexp.stages.distill; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'brevitas', "
            "'torch_pruning', 'mlflow', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_every_stage_class_derives_from_stage():
    for group, option in BASE_OPTIONS:
        raw = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
        assert issubclass(type(check_stage(group, OmegaConf.create(raw))), Stage)


def test_a_job_config_written_before_the_specs_still_gets_a_name():
    """``tinyexp-report --sweep`` reads old job folders: their stage nodes have no _target_."""
    old = OmegaConf.create({"dataset": {"name": "sensors"}, "arch": {"name": "cnn"},
                            "prune": {"name": "l1", "ratio": 0.5}, "quant": {"name": "none"}})
    assert describe(old) == "sensors-cnn-l1-none"
