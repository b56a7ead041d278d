"""Every zoo architecture, at a tiny size, through every stage: training, structured pruning with
every criterion, post-training quantization, BatchNorm folding + QAT, and (slow) TFLite Micro."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch.nn import functional as F

from tinyexp.compress.fold import fold_batchnorm, unfolded_batchnorms
from tinyexp.compress.prune import accumulate_gradients, prune_structured
from tinyexp.compress.qat import calibrate, export_qcdq, to_qat
from tinyexp.compress.quantize import quantize_onnx, weight_bytes
from tinyexp.compress.tp_patches import (
    FPGMImportance,
    L1Importance,
    MagnitudeImportance,
    TaylorImportance,
)
from tinyexp.measure.cost import count_params, export_onnx, ort_session
from tinyexp.models.ds_cnn import DSCNN
from tinyexp.models.mobilenet import MobileNetV1, MobileNetV2
from tinyexp.models.resnet import ResNet
from tinyexp.models.vgg import VGG

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = 4
# name -> (tiny network, one sample's shape)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "resnet": (lambda: ResNet(3, CLASSES, 16, depths=[1, 1], widths=[8, 16], stem_width=8),
               (3, 16, 16)),
    "resnet_v2-bottleneck": (lambda: ResNet(3, CLASSES, 16, version=2, block="bottleneck",
                                            depths=[1, 2], widths=[4, 8], stem_width=8),
                             (3, 16, 16)),
    "mobilenet_v1": (lambda: MobileNetV1(3, CLASSES, 16, alpha=0.125), (3, 16, 16)),
    "mobilenet_v2": (lambda: MobileNetV2(3, CLASSES, 16, alpha=0.25, expansion=2,
                                         last_width=32), (3, 16, 16)),
    "vgg": (lambda: VGG(3, CLASSES, 16, width=0.0625, hidden=[16]), (3, 16, 16)),
    "ds_cnn": (lambda: DSCNN(1, CLASSES, (16, 8), filters=8, num_blocks=2), (1, 16, 8)),
}
CRITERIA: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": L1Importance, "l2": lambda: MagnitudeImportance(p=2), "taylor": TaylorImportance,
    "fpgm": FPGMImportance, "random": tp.importance.RandomImportance,
}
PTQ_SETTINGS = {"per_channel": True, "calibrate_method": "minmax", "format": "qoperator"}


def build(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO[arch][0]()


def images(arch: str, n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *ZOO[arch][1], generator=torch.Generator().manual_seed(seed))


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % CLASSES


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    """The artifact's outputs in ONNX Runtime, one batch-1 sample at a time (static shapes)."""
    session = ort_session(path)
    return np.concatenate([session.run(None, {"input": x[i:i + 1].numpy()})[0]
                           for i in range(len(x))])


@pytest.fixture(scope="module")
def deploy_extra() -> None:
    import importlib.util

    for name in ("litert_torch", "tflite_micro", "ai_edge_quantizer"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"the deploy extra is not installed ({name} missing)")


def check_depthwise(net: nn.Module) -> None:
    """Every grouped conv is still depthwise: one filter per channel of its (pruned) input.
    (Residual additions of mismatched widths would fail the forward pass.)"""
    grouped = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    for m in grouped:
        assert m.groups == m.in_channels == m.out_channels


@pytest.mark.parametrize("arch", list(ZOO))
def test_a_training_step_changes_the_weights(arch):
    net = build(arch).train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = images(arch, 8)
    F.cross_entropy(net(x), labels(8)).backward()
    opt.step()
    unchanged = [n for n, p in net.named_parameters()
                 if p.dim() > 1 and torch.equal(p, before[n])]
    assert not unchanged


@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("arch", list(ZOO))
def test_every_criterion_prunes_into_a_smaller_network_that_exports(arch, criterion, tmp_path):
    net, x = build(arch).eval(), images(arch, 8)
    hooks = {}
    if criterion == "taylor":
        hooks["before_step"] = lambda n: accumulate_gradients(
            n, [x], lambda m, b: F.cross_entropy(m(b), labels(len(b))))
    torch.manual_seed(0)  # the random criterion draws from torch's generator
    pruned, report = prune_structured(net, x[:2], 0.5, importance=CRITERIA[criterion](),
                                      **hooks)

    assert report.params_after == count_params(pruned) < 0.6 * report.params_before
    assert report.groups_unchanged == []
    assert pruned.head.fc.out_features == CLASSES  # the logits are never pruned
    check_depthwise(pruned)
    pruned.eval()
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (8, CLASSES) and torch.isfinite(y).all()
    path = export_onnx(pruned, x[:1], tmp_path / "pruned.onnx", opset=17)
    np.testing.assert_allclose(run_onnx(path, x[:2]), y[:2].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["dynamic", "int8", "int8-qdq", "int16x8", "fp16"])
@pytest.mark.parametrize("arch", list(ZOO))
def test_post_training_quantization_runs_in_onnxruntime(arch, mode, tmp_path):
    net, x = build(arch).eval(), images(arch, 32)
    src = export_onnx(net, x[:1], tmp_path / "float.onnx", opset=17, compact=False)
    mode, _, fmt = mode.partition("-")
    dst = quantize_onnx(src, tmp_path / "q.onnx", mode, x.numpy(),
                        **{**PTQ_SETTINGS, "format": fmt or "qoperator"})
    with torch.no_grad():
        reference = net(x[:8]).numpy()
    out = run_onnx(dst, x[:8])
    assert out.shape == reference.shape and np.isfinite(out).all()
    error = np.sqrt(np.mean((out - reference) ** 2)) / reference.std()
    assert error < 0.2, error  # untrained: a loose bound, but a wrong graph is far off
    assert weight_bytes(dst) < weight_bytes(src)


@pytest.mark.parametrize("arch", list(ZOO))
def test_batchnorm_folds_into_the_convs(arch):
    net, x = build(arch).eval(), images(arch, 4)
    folded = fold_batchnorm(net, x)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(x), net(x), rtol=1e-4, atol=1e-5)
    # only a pre-activation BatchNorm (after an addition or a ReLU) has no conv to fold into
    left = unfolded_batchnorms(folded)
    assert all(name.endswith(".pre.0") or name == "head.bn" for name in left), left
    assert bool(left) == arch.startswith("resnet_v2")


# MobileNetV2's 52 quantized layers take ~7 s to convert, calibrate, train and export
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow)
                                  if a == "mobilenet_v2" else a for a in ZOO])
def test_qat_wraps_trains_a_step_and_exports(arch, tmp_path):
    x = images(arch, 16)
    net = fold_batchnorm(build(arch).eval(), x)  # as quant=qat does (fold_bn: true)
    qnet = calibrate(to_qat(net, 4, 8), x).train()
    quantized = [n for n, m in qnet.named_modules() if type(m).__module__.startswith("brevitas")
                 and isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(quantized) == sum(isinstance(m, nn.Conv2d | nn.Linear) for m in net.modules())
    before = {n: p.detach().clone() for n, p in qnet.named_parameters()}
    opt = torch.optim.SGD(qnet.parameters(), lr=0.01)
    F.cross_entropy(qnet(x), labels(16)).backward()
    opt.step()
    assert any(not torch.equal(p, before[n]) for n, p in qnet.named_parameters())
    qnet.eval()
    path = export_qcdq(qnet, x, tmp_path / "qat.onnx", opset=17)
    with torch.no_grad():  # batch 1, as exported: a batch's float rounding may flip a level
        expected = np.concatenate([qnet(x[i:i + 1]).numpy() for i in range(4)])
    got = run_onnx(path, x[:4])
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max() + 1e-6


def rel_rmse(y: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - reference) ** 2)) / reference.std())


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ZOO))
def test_deploys_to_tflite_micro(arch, tmp_path, deploy_extra):
    """float32 TFLite computes the network; full-integer int8 (PT2E) of it and of its pruned
    copy loads and runs in TFLite Micro, no further off than 3x ONNX Runtime's int8 (PTQ) of
    the same untrained network (a misquantized layer is 10x further off), C sources written."""
    from tinyexp.deploy.csource import write_sources
    from tinyexp.deploy.export import export_tflite
    from tinyexp.deploy.tflm import inspect, tflm_predict

    x = images(arch, 64)
    net = build(arch).eval()
    pruned, _ = prune_structured(build(arch).eval(), x[:2], 0.5, importance=L1Importance())
    for name, model, modes in (("full", net, ("float32", "int8")),
                               ("pruned", pruned.eval(), ("int8",))):
        with torch.no_grad():
            reference = model(x[:8]).numpy()
        onnx = export_onnx(model, x[:1], tmp_path / f"{name}.onnx", opset=17, compact=False)
        ort_int8 = quantize_onnx(onnx, tmp_path / f"{name}-int8.onnx", "int8", x.numpy(),
                                 **PTQ_SETTINGS)
        for mode in modes:
            path = tmp_path / f"{arch}-{name}-{mode}.tflite"
            report = export_tflite(model, x[:1], x.numpy(), mode, path, arch=arch)
            assert report["float_ops"] == [] and report["input_dtype"] == mode
            ins = inspect(path)
            assert ins.loads, ins.error
            error = rel_rmse(tflm_predict(path, ins.arena_bytes)(x[:8].numpy()), reference)
            if mode == "float32":
                assert error < 1e-4, error
            else:
                assert error < 3 * rel_rmse(run_onnx(ort_int8, x[:8]), reference) + 0.02
    assert len(write_sources(path, tmp_path / "src", arena_bytes=ins.arena_bytes)) == 3
