"""Every config file composes and validates; every bad value fails with its own one-line error."""

from __future__ import annotations

import pytest
from support import CONF, SKAB_DIR

from tinyexp.config import ConfigError, validate

GROUP_FILES = sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name != "hydra")


def _overrides_for(path) -> list[str]:
    group, option = path.parent.name, path.stem
    extra = []
    if group == "arch" and option == "custom_cnn":
        extra = ["dataset=digits"]
    if group == "dataset" and option == "digits":
        extra = ["arch=custom_cnn"]
    if group == "dataset" and option == "skab":
        if not SKAB_DIR.exists():
            pytest.skip("no SKAB data here")
        extra = [f"dataset.data_dir={SKAB_DIR}", "dataset.window=64"]
    return [f"{group}={option}", *extra]


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_file_composes_and_validates(compose_cfg, path):
    cfg = compose_cfg(_overrides_for(path))
    validate(cfg)


def test_defaults_are_sensors_cnn_l1_and_no_quantization(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.dataset.name, cfg.arch.name, cfg.prune.name) == ("sensors", "cnn", "l1")
    assert cfg.get("quant") is None and cfg.get("analysis") is None  # null groups


BAD = [
    (["prune.ratio=1.5"], "prune.ratio", "[0, 1)"),
    (["prune.ratio=-0.1"], "prune.ratio", "[0, 1)"),
    (["prune.ratio=abc"], "prune.ratio", "Float"),
    (["prune.steps=0"], "prune.steps", ">= 1"),
    (["deploy=tflm", "deploy.mode=int4"], "deploy.mode", "float32, dynamic, int8"),
    (["deploy=tflm", "deploy.int8_quantizer=tf"], "deploy.int8_quantizer", "pt2e or aeq"),
    (["prune.finetune_epochs=-2"], "prune.finetune_epochs", ">= 0"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs", ">= 1"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs", "int"),
    (["+prune.foo=1"], "prune.foo", "allowed: name, ratio"),
    (["arch=cnn", "dataset=digits"], "arch", "image"),
    (["arch=custom_cnn"], "arch", "series"),
    (["dataset=skab"], "dataset.data_dir", "required"),
    (["dataset=skab", "dataset.data_dir=/no/such/dir"], "dataset.data_dir", "/no/such/dir"),
    (["arch.channels=[32,-1]"], "arch.channels", "positive"),
    (["arch.kernel_size=4"], "arch.kernel_size", "odd"),
    (["dataset.window=30"], "dataset.window", "multiple of 4"),
    (["arch=transformer", "arch.d_model=30"], "arch.d_model", "multiple of arch.num_heads"),
    (["seed=-1"], "seed", ">= 0"),
    (["optim.lr=0"], "optim.lr", "> 0"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction", "(0, 1)"),
    (["measure.latency_runs=1"], "measure.latency_runs", ">= 5"),
    (["quant=qat", "quant.weight_bits=1"], "quant.weight_bits", "[2, 8]"),
    (["quant=qat", "quant.act_bits=16"], "quant.act_bits", "[2, 8]"),
    (["quant=int8", "quant.calibrate_method=magic"], "quant.calibrate_method", "minmax"),
    (["quant=int16x8", "quant.calibration_samples=0"], "quant.calibration_samples", ">= 1"),
    (["quant=fp16", "+quant.per_channel=true"], "quant.per_channel", "allowed: name"),
    (["quant=int16x8", "quant.format=qoperator"], "quant.format", "qdq for quant=int16x8"),
    (["analysis=layers", "analysis.ratios=[0.5,1.0]"], "analysis.ratios", "(0, 1)"),
    (["analysis=layers", "analysis.ratios=[]"], "analysis.ratios", "non-empty"),
    (["analysis=layers", "analysis.finetune_epochs=-1"], "analysis.finetune_epochs", ">= 0"),
    (["analysis=layers", "analysis.metric=accuracy"], "analysis.metric", "mse, f1"),
]


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD, ids=lambda v: str(v))
def test_bad_values_name_the_key_and_what_is_allowed(compose_cfg, overrides, key, hint):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}:"), message
    assert hint in message
    assert "\n" not in message


def test_empty_skab_dir_is_rejected(compose_cfg, tmp_path):
    (tmp_path / "valve1").mkdir()
    cfg = compose_cfg(["dataset=skab", f"dataset.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir:"):
        validate(cfg)


def test_the_measure_defaults_are_the_schemas(compose_cfg):
    """config.yaml shows the measure settings; the schema holds the same defaults."""
    import dataclasses

    from tinyexp.schemas import Measure

    assert dict(compose_cfg().measure) == dataclasses.asdict(Measure())
