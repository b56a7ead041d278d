"""QAT (``quant=w8a8``) ends at least as good as post-training ``quant=int8``.

The fast tier checks where QAT starts: BatchNorm folded, every activation range calibrated, the
8-bit network computing what the float one does. The slow tier trains real baselines on three
seeds and compares the measured artifacts of both methods.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from support import INT8_SATURATES, TINY, compose

from tinyexp import pipeline
from tinyexp.compress.fold import unfolded_batchnorms
from tinyexp.compress.qat import validation_loss
from tinyexp.config import validate
from tinyexp.lit import train
from tinyexp.tracking import NullTracker

pytestmark = pytest.mark.usefixtures("single_thread")

SETUPS = {
    "sensors-cnn": ["dataset=sensors", "arch=cnn"],
    "digits-custom_cnn": ["dataset=digits", "arch=custom_cnn"],
}


def _job(setup: str, overrides: list[str], out_dir, cache_dir=None):
    """``(cfg, datamodule, float net, context)`` of a job without pruning, writing to
    ``out_dir``."""
    cfg = compose([*SETUPS[setup], "prune=none", "logger=none",
                   f"cache_dir={cache_dir or out_dir / 'cache'}", *overrides])
    data = pipeline.build_datamodule(cfg)
    net = pipeline.build_net(cfg, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = pipeline.build_context(cfg, data, out_dir, NullTracker())
    return cfg, data, net, ctx


def _tiny(setup: str) -> list[str]:
    """The fast tier's small job for ``setup`` (no pruning; digits has no series lengths)."""
    return [o for o in TINY if not o.startswith("prune.")
            and not (setup.startswith("digits") and o.startswith("dataset."))]


def _test_inputs(data) -> torch.Tensor:
    if data.task == "anomaly":
        return torch.from_numpy(np.concatenate([s.test for s in data.segments]))
    return torch.from_numpy(data.test_arrays()[0])


# ----------------------------------------------------------------------------- where QAT starts


@pytest.mark.parametrize("setup", SETUPS)
def test_calibrated_qat_net_starts_at_the_float_output(setup, tmp_path):
    cfg, data, net, ctx = _job(setup, [*_tiny(setup), "quant=w8a8"], tmp_path)
    cfg.trainer.limit_val_batches = 1.0  # validate on all of it, as validation_loss does
    info = train(net, data, cfg)  # a few steps: trained BatchNorm statistics, weights moved
    # the loss QAT compares its start with is the one training restores its best epoch by
    assert validation_loss(net, data) == pytest.approx(info["best_val_loss"], rel=1e-4)
    spec = validate(cfg)["quant"]
    assert spec.fold_bn
    qnet = spec.prepare(net, ctx).eval()
    assert unfolded_batchnorms(qnet) == []  # the deployed graph holds no BatchNorm
    # every activation quantizer, the network input's too, has its range from the data
    scalings = [m for m in qnet.modules() if type(m).__name__ == "ParameterFromRuntimeStatsScaling"]
    assert len(scalings) == sum(n.endswith("input_quant") for n, _ in qnet.named_modules())
    assert all(m.counter > m.collect_stats_steps and float(m.value) > 0 for m in scalings)

    x = _test_inputs(data)
    with torch.no_grad():
        ref, got = net.eval()(x), qnet(x)
    rel_mse = float((got - ref).pow(2).mean() / ref.pow(2).mean())
    print(f"{setup}: calibrated w8a8 vs float, relative output MSE {rel_mse:.2e}")
    assert rel_mse < 1e-3


def test_fold_bn_false_keeps_the_batchnorms(tmp_path):
    cfg, data, net, ctx = _job("digits-custom_cnn",
                               [*_tiny("digits"), "quant=w8a8", "quant.fold_bn=false"], tmp_path)
    qnet = validate(cfg)["quant"].prepare(net, ctx)
    assert unfolded_batchnorms(qnet) == unfolded_batchnorms(net) != []


def test_a_fine_tune_that_only_hurts_leaves_the_calibrated_start(tmp_path):
    cfg, data, net, ctx = _job("sensors-cnn", [*_tiny("sensors"), "quant=w8a8"], tmp_path)
    train(net, data, cfg)
    spec = validate(cfg)["quant"]
    start = spec.prepare(net, ctx)

    def ruin(qnet, stage, max_epochs, searched=True, lr=None):
        with torch.no_grad():
            for p in qnet.parameters():
                p.add_(torch.randn_like(p))
        return {"epochs": max_epochs}

    ruined = dataclasses.replace(ctx, fit=ruin)
    qnet, metrics = spec.apply(net, ruined)
    assert validation_loss(qnet, data) == pytest.approx(validation_loss(start, data))
    assert metrics["epochs"] == spec.epochs
    assert ruined.tags["tinyexp.qat_weights"] == "calibrated"


# ----------------------------------------------------------------------------- QAT vs PTQ

# Enough training for a baseline worth quantizing, on the full data: ~20 s a seed.
TRAINED = ["trainer.max_epochs=20", "measure.latency_warmup=1", "measure.latency_runs=5"]
QAT = ["quant.epochs=5"]
# Tolerances of "no worse than int8": the rounding noise of one measured artifact.
TOLERANCE = {"roc_auc": 0.005, "mse": 0.02, "accuracy": 0.01}  # mse: relative


def _quantized(setup: str, quant: str, seed: int, tmp_path) -> dict[str, float]:
    """Metrics of the ``quant`` artifact of the seed's baseline (trained once, cached)."""
    qat = QAT if quant.startswith("w") else []
    cfg, _, net, ctx = _job(setup, [*TRAINED, f"quant={quant}", *qat, f"seed={seed}"],
                            tmp_path / f"{quant}-{seed}", cache_dir=tmp_path / "cache")
    net, _ = pipeline.baseline(net, ctx, cfg, NullTracker())
    return validate(cfg)["quant"].apply(net, ctx)[1]


@pytest.mark.slow
@pytest.mark.parametrize("setup", SETUPS)
def test_w8a8_qat_loses_no_more_than_int8_post_training(setup, tmp_path):
    if INT8_SATURATES:
        # Both artifacts are measured in ONNX Runtime, whose int8 kernels saturate on this CPU
        # (x86 without VNNI): the comparison would rank the kernels' errors, not the methods.
        pytest.skip("ONNX Runtime's int8 kernels saturate on x86 without VNNI")
    keys = ("f1", "roc_auc", "mse") if setup.startswith("sensors") else ("accuracy",)
    failures = []
    for seed in range(3):
        ptq = _quantized(setup, "int8", seed, tmp_path)
        qat = _quantized(setup, "w8a8", seed, tmp_path)
        print(f"{setup} seed {seed}: " + ", ".join(
            f"{k} int8 {ptq[k]:.4f} w8a8 {qat[k]:.4f}" for k in keys))
        for key, tol in TOLERANCE.items():
            if key not in keys:
                continue
            worse = (qat[key] > ptq[key] * (1 + tol) if key == "mse"
                     else qat[key] < ptq[key] - tol)
            if worse:
                failures.append(f"seed {seed} {key}: w8a8 {qat[key]:.4f} vs int8 {ptq[key]:.4f}")
    assert not failures, "; ".join(failures)
