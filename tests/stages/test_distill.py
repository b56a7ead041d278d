"""``distill=kd``: the spec checks its keys; apply hands a frozen copy of the baseline on as
the teacher of every later training and leaves the network itself alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from support import CONF

from tinyexp.config import check_stage
from tinyexp.schemas import ConfigError
from tinyexp.stages.base import Context
from tinyexp.stages.distill import KnowledgeDistillation


def test_the_yaml_builds_the_spec_with_its_defaults():
    spec = check_stage("distill", OmegaConf.create(yaml.safe_load(
        (CONF / "distill" / "kd.yaml").read_text())))
    assert spec == KnowledgeDistillation()
    assert spec.settings() == {"temperature": 4.0, "weight": 0.5}
    assert spec.label() == "kd-t4-w0.5"
    assert yaml.safe_load((CONF / "distill" / "none.yaml").read_text()) == {"distill": None}


@pytest.mark.parametrize(("values", "message"), [
    ({"temperature": 0.0}, "distill.temperature: must be > 0, got 0.0"),
    ({"temperature": -1.0}, "distill.temperature: must be > 0, got -1.0"),
    ({"weight": 1.5}, "distill.weight: must be in [0, 1], got 1.5"),
    ({"weight": -0.1}, "distill.weight: must be in [0, 1], got -0.1"),
])
def test_out_of_range_values_are_one_line_errors_naming_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        check_stage("distill", OmegaConf.create({
            "_target_": "tinyexp.stages.distill.KnowledgeDistillation", "name": "kd", **values}))
    assert str(err.value) == message


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_ends_of_the_weight_range_are_allowed(weight):
    assert KnowledgeDistillation(weight=weight).weight == weight


def _context() -> Context:
    def unused(*args, **kwargs):
        raise AssertionError("distill=kd trains and measures nothing")

    return Context(datamodule=None, example=None, calibration=unused, fit=unused,
                   evaluate=unused, measure_float=unused, measure_artifact=unused,
                   task_metrics=unused, timing={}, sensitivity_metric="mse", opset=17,
                   out_dir=Path("."))


def test_apply_keeps_a_frozen_copy_of_the_incoming_network_as_the_teacher():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 4)).train()
    ctx, spec = _context(), KnowledgeDistillation(temperature=2.0, weight=0.3)
    out, metrics = spec.apply(net, ctx)
    assert out is net and net.training  # the network goes on unchanged, still trainable
    assert all(p.requires_grad for p in net.parameters())
    assert metrics == {"temperature": 2.0, "weight": 0.3}
    assert ctx.distill is spec
    teacher = ctx.teacher
    assert teacher is not net and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                  net.state_dict().values(), strict=True))
    with torch.no_grad():  # a copy: training the student later leaves the teacher as it was
        net[0].weight.add_(1.0)
    assert not torch.equal(teacher[0].weight, net[0].weight)


def test_the_spec_module_imports_nothing_heavy():
    code = ("import sys, tinyexp.stages.distill; print(sorted(m for m in ('torch', "
            "'pytorch_lightning', 'torch_pruning', 'onnx', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
