"""``deploy=tflm`` in the pipeline: the final network converted, run in TFLite Micro and
measured there; a network that cannot deploy records why and the job still finishes."""

from __future__ import annotations

import json

import pytest
import yaml
from omegaconf import OmegaConf
from support import CONF, INT8_SATURATES, TINY, compose

from tinyexp import pipeline
from tinyexp.config import check_stage
from tinyexp.stages.deploy import TFLMDeploy

pytest.importorskip("litert_torch")
pytest.importorskip("tflite_micro")
pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_yaml_builds_the_spec_with_its_defaults():
    spec = check_stage("deploy", OmegaConf.create(yaml.safe_load(
        (CONF / "deploy" / "tflm.yaml").read_text())))
    assert spec == TFLMDeploy()
    assert spec.label() == "tflm" and TFLMDeploy(mode="int8").label() == "tflm-int8"


def _run(tmp_path, *overrides):
    tiny = [a for a in TINY if not a.startswith("prune.")]  # the tests run prune=none
    cfg = compose([*tiny, "logger=none", "deploy=tflm", f"cache_dir={tmp_path / 'cache'}",
                   f"+output_dir={tmp_path / 'job'}", *overrides])
    return pipeline.run(cfg), tmp_path / "job"


def test_digits_int8_runs_in_tflm_as_onnx_runtime_runs_it(tmp_path):
    digits = [a for a in TINY if "_steps" not in a]
    cfg = compose([*digits, "dataset=digits", "arch=custom_cnn", "quant=int8", "logger=none",
                   "deploy=tflm", f"cache_dir={tmp_path / 'cache'}",
                   f"+output_dir={tmp_path / 'job'}"])
    result = pipeline.run(cfg)
    m, job = result["metrics"], tmp_path / "job"
    assert result["final_stage"] == "deployed"
    assert result["objective"] == m["deployed/accuracy"]
    # the same int8 model in two runtimes: TFLM's kernels round differently, little else
    # (ONNX Runtime's int8 kernels saturate on x86 without VNNI: there they differ more)
    if not INT8_SATURATES:
        assert abs(m["deployed/accuracy"] - m["quantized/accuracy"]) <= 0.01
    assert m["deployed/flash_bytes"] == (job / "deployed.tflite").stat().st_size
    assert m["deployed/ram_bytes"] == m["deployed/arena_bytes"] >= m["deployed/arena_head_bytes"]
    assert m["deployed/arena_tail_bytes"] > 0 and m["deployed/float_compute_ops"] == 0
    assert m["deployed/weight_bytes"] < m["deployed/flash_bytes"]
    # the ONNX-based estimate of the int8 model, checked against TFLM (issue: within 10%)
    assert 0.9 <= m["deployed/ram_estimate_ratio"] <= 1.1
    assert 0.9 <= m["deployed/flash_estimate_ratio"] <= 1.1
    main = (job / "firmware" / "main.cc").read_text()
    assert "MicroMutableOpResolver" in main and "AddFullyConnected" in main
    assert (job / "firmware" / "model_data.cc").exists()
    saved = json.loads((job / "metrics.json").read_text())
    assert saved["deployed/arena_bytes"] == m["deployed/arena_bytes"]


def test_a_qat_network_records_why_it_does_not_deploy_and_the_job_finishes(tmp_path):
    result, job = _run(tmp_path, "prune=none", "quant=w8a8", "quant.epochs=1")
    m = result["metrics"]
    assert result["final_stage"] == "deployed" and result["objective"] is None
    assert "quantized/f1" in m and not any(k.startswith("deployed/") for k in m)
    assert not (job / "deployed.tflite").exists()


def test_a_mode_tflm_cannot_load_is_recorded_in_one_line(tmp_path, caplog):
    result, job = _run(tmp_path, "prune=none", "deploy.mode=dynamic")
    assert not any(k.startswith("deployed/") for k in result["metrics"])
    lines = [r.getMessage() for r in caplog.records if "not deployed" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "Hybrid" in lines[0], lines
