"""The image model zoo: MLPerf Tiny parameter counts, shapes, the stem/blocks/head contract,
ONNX parity, determinism, and the config schemas' one-line errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import OmegaConf
from support import CONF

from tinyexp.checks import ConfigError
from tinyexp.config import constructor_kwargs, validate
from tinyexp.models.blocks import fit_strides
from tinyexp.models.ds_cnn import DSCNN
from tinyexp.models.mobilenet import MobileNetV1, MobileNetV2
from tinyexp.models.resnet import ResNet
from tinyexp.models.schemas import (
    IMAGE_ARCH_SCHEMAS,
    DSCNNArch,
    MobileNetV1Arch,
    MobileNetV2Arch,
    ResNetArch,
    VGGArch,
)
from tinyexp.models.vgg import VGG

pytestmark = pytest.mark.usefixtures("single_thread")

ZOO = ("resnet", "mobilenet_v1", "mobilenet_v2", "vgg", "ds_cnn")

# name -> (factory, one sample's shape, classes)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], int]] = {
    "resnet-v1-basic": (lambda: ResNet(3, 4, 16, depths=[1, 1], widths=[8, 16], stem_width=8),
                        (3, 16, 16), 4),
    "resnet-v2-basic": (lambda: ResNet(1, 3, 8, version=2, depths=[2, 1], widths=[4, 8],
                                       stem_width=4), (1, 8, 8), 3),
    "resnet-v1-bottleneck": (lambda: ResNet(3, 4, 16, block="bottleneck", depths=[1, 2],
                                            widths=[4, 8], stem_width=8, shortcut_norm=True),
                             (3, 16, 16), 4),
    "resnet-v2-bottleneck": (lambda: ResNet(3, 2, 12, version=2, block="bottleneck",
                                            depths=[1, 1, 1], widths=[2, 4, 4], stem_width=4,
                                            conv_bias=False), (3, 12, 12), 2),
    "mobilenet_v1-a0.125": (lambda: MobileNetV1(3, 4, 16, alpha=0.125), (3, 16, 16), 4),
    "mobilenet_v1-a0.0625-relu6": (lambda: MobileNetV1(1, 10, 8, alpha=0.0625, activation="relu6",
                                                       dropout=0.1), (1, 8, 8), 10),
    "mobilenet_v1-strides": (lambda: MobileNetV1(3, 2, 16, alpha=0.0625,
                                                 strides=[1, 1, 2, *[1] * 11]), (3, 16, 16), 2),
    "mobilenet_v2-a0.35": (lambda: MobileNetV2(3, 4, 16, alpha=0.35, expansion=2, last_width=32),
                           (3, 16, 16), 4),
    "vgg16-w0.0625": (lambda: VGG(3, 4, 16, width=0.0625, hidden=[16]), (3, 16, 16), 4),
    "vgg11-no-hidden": (lambda: VGG(1, 10, 8, width=0.0625, depths=[1, 1, 2, 2, 2], hidden=[],
                                    dropout=0.2), (1, 8, 8), 10),
    "ds_cnn-49x10": (lambda: DSCNN(1, 12, (49, 10), filters=8, num_blocks=2), (1, 49, 10), 12),
    "ds_cnn-16x8": (lambda: DSCNN(2, 3, [16, 8], filters=4, num_blocks=1, conv_bias=False),
                    (2, 16, 8), 3),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CASES[name][0]().eval()


def batch(name: str, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *CASES[name][1], generator=torch.Generator().manual_seed(seed))


def keras_params(net: nn.Module) -> int:
    """Parameters as Keras counts them: weights and biases plus BatchNorm's moving statistics."""
    stats = sum(b.numel() for name, b in net.named_buffers()
                if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in net.parameters()) + stats


def from_yaml(arch: str, **shape) -> nn.Module:
    """The network of ``conf/arch/<arch>.yaml`` with its default keys, as the pipeline builds it."""
    torch.manual_seed(0)
    node = OmegaConf.load(CONF / "arch" / f"{arch}.yaml")
    return instantiate(constructor_kwargs(node), **shape)


# ----------------------------------------------------------------------------- MLperf Tiny


@pytest.mark.parametrize(("arch", "shape", "expected"), [
    ("resnet", {"in_channels": 3, "num_classes": 10, "image_size": 32}, 78_666),
    ("mobilenet_v1", {"in_channels": 3, "num_classes": 2, "image_size": 96}, 221_794),
    ("ds_cnn", {"in_channels": 1, "num_classes": 12, "image_size": [49, 10]}, 24_908),
])
def test_yaml_defaults_are_the_mlperf_tiny_references(arch, shape, expected):
    """ResNet-8 (CIFAR-10), MobileNetV1 0.25 (visual wake words), DS-CNN (keyword spotting)."""
    assert keras_params(from_yaml(arch, **shape)) == expected


def test_mlperf_reference_layouts():
    resnet = ResNet(3, 10, 32)
    assert [b.shortcut is None for b in resnet.blocks] == [True, False, False]
    assert all(len(b.shortcut) == 1 for b in resnet.blocks[1:])  # a biased 1x1 conv, no BN
    mobilenet = MobileNetV1(3, 2, 96)
    strides = [m.stride[0] for m in mobilenet.modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert strides == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]  # the paper's, on 96x96
    ds_cnn = DSCNN(1, 12, (49, 10))
    with torch.no_grad():
        assert ds_cnn.stem(torch.zeros(1, 1, 49, 10)).shape == (1, 64, 25, 5)  # TF 'same'
        assert mobilenet.blocks(mobilenet.stem(torch.zeros(1, 3, 96, 96))).shape[-1] == 3


# ----------------------------------------------------------------------------- shapes, contract


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_and_the_stem_blocks_head_contract(name):
    net, x = build(name), batch(name, 3)
    assert (net.in_channels, net.num_classes) == (CASES[name][1][0], CASES[name][2])
    with torch.no_grad():
        y = net(x)
        features = net.stem(x)
        assert features.dim() == 4
        for block in net.blocks:  # every block is a cut point: (B, C, H, W) features
            features = block(features)
            assert features.dim() == 4 and features.shape[0] == 3
        assert torch.equal(net.head(features), y)
    assert y.shape == (3, CASES[name][2]) and torch.isfinite(y).all()
    activations = [m for m in net.modules() if isinstance(m, nn.ReLU | nn.ReLU6)]
    assert len({id(m) for m in activations}) == len(activations) > 0  # one instance per use


@pytest.mark.parametrize(("net", "hw", "sides"), [
    (lambda: MobileNetV1(1, 2, 8, alpha=0.0625), (8, 8), [8, 4, 2]),
    (lambda: MobileNetV1(3, 2, 32, alpha=0.0625), (32, 32), [32, 16, 8, 4, 2]),
    (lambda: MobileNetV2(1, 2, 8, alpha=0.35, last_width=16), (8, 8), [8, 4, 2]),
    (lambda: MobileNetV2(1, 2, (28, 40), alpha=0.35, last_width=16), (28, 40), [28, 14, 7, 4, 2]),
    (lambda: VGG(1, 2, 8, width=0.0625, hidden=[]), (8, 8), [8, 4, 2, 1]),
    (lambda: VGG(1, 2, (7, 12), width=0.0625, hidden=[]), (7, 12), [7, 3, 1]),
    (lambda: ResNet(1, 2, 9, depths=[1, 1, 1, 1, 1], widths=[2] * 5), (9, 9), [9, 5, 3, 2, 1]),
])
def test_small_inputs_stop_downsampling(net, hw, sides):
    """MobileNets' null strides stop halving at 2x2; VGG pools while it has 2 pixels; ResNet
    halves at every stage (its schema checks the input is large enough)."""
    net = net().eval()
    x = torch.zeros(1, net.in_channels, *hw)
    seen = [min(hw)]  # the short side after the stem and each block, when it changes
    with torch.no_grad():
        for layer in [net.stem, *net.blocks]:
            x = layer(x)
            if min(x.shape[-2:]) != seen[-1]:
                seen.append(min(x.shape[-2:]))
    assert seen == sides
    assert fit_strides([2, 2, 2, 2], 9) == [2, 2, 2, 1]  # 9 -> 5 -> 3 -> 2, not on to 1
    assert fit_strides([1, 2], 1) == [1, 1]


def test_bottleneck_blocks_are_four_times_wider():
    net = ResNet(3, 4, 16, block="bottleneck", depths=[2, 1], widths=[4, 8], stem_width=8)
    assert [b.out_channels for b in net.blocks] == [16, 16, 32]
    assert net.head.fc.in_features == 32
    assert net.blocks[1].shortcut is None and net.blocks[0].shortcut is not None  # 8 -> 16


def test_v2_is_pre_activation():
    v1, v2 = ResNet(3, 4, 16, version=1), ResNet(3, 4, 16, version=2)
    assert isinstance(v1.stem[-1], nn.ReLU) and len(v2.stem) == 1  # v2: BN-ReLU in the blocks
    assert v1.blocks[0].pre is None and isinstance(v2.blocks[0].pre[0], nn.BatchNorm2d)
    assert isinstance(v2.head.bn, nn.BatchNorm2d) and not hasattr(v1.head, "bn")


def test_mobilenet_v2_residuals_only_where_the_shape_keeps():
    net = MobileNetV2(3, 4, 32, alpha=1.0)
    residual = [b.residual for b in net.blocks[:-1]]
    assert residual == [False, False, True, False, True, True, False, True, True, True,
                        False, True, True, False, True, True, False]
    assert net.blocks[-1].conv.out_channels == 1280 and net.head.fc.in_features == 1280


# ----------------------------------------------------------------------------- ONNX, determinism


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    net = build(name)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (batch(name, 2),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        x = batch(name, n, seed=n)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(["output"], {"input": x.numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert expected.std() > 1e-3  # not a constant: the initialisation keeps the signal alive


@pytest.mark.parametrize("name", list(CASES))
def test_deterministic_with_seed(name):
    a, b, other = build(name, 0), build(name, 0), build(name, 1)
    x = batch(name, 4)
    with torch.no_grad():
        ya, yb, yo = a(x), b(x), other(x)
        assert torch.equal(ya, a(x))
    assert torch.equal(ya, yb) and not torch.allclose(ya, yo)


@pytest.mark.parametrize("name", list(CASES))
def test_backward_reaches_every_parameter(name):
    net = build(name).train()
    net(batch(name, 2)).pow(2).mean().backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]


# ----------------------------------------------------------------------------- config schemas


@pytest.mark.parametrize("arch", ZOO)
def test_every_zoo_yaml_composes_with_8x8_digits(compose_cfg, arch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # validate() creates the cache folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = validate(compose_cfg([f"arch={arch}", "dataset=digits"]))["arch"]
    assert isinstance(spec, IMAGE_ARCH_SCHEMAS[arch])
    node = OmegaConf.load(CONF / "arch" / f"{arch}.yaml")  # the schema's defaults are the YAML's
    assert OmegaConf.to_container(node) == OmegaConf.to_container(
        OmegaConf.structured(IMAGE_ARCH_SCHEMAS[arch](_target_=node._target_)))
    net = from_yaml(arch, in_channels=1, num_classes=10, image_size=8)
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


BAD = [
    (lambda: ResNetArch("t", version=3), "arch.version", "1 (post-activation)"),
    (lambda: ResNetArch("t", block="wide"), "arch.block", "basic or bottleneck"),
    (lambda: ResNetArch("t", depths=[1, 0]), "arch.depths", "positive"),
    (lambda: ResNetArch("t", widths=[8, 8]), "arch.widths", "one width per stage"),
    (lambda: ResNetArch("t", stem_width=0), "arch.stem_width", "> 0"),
    (lambda: MobileNetV1Arch("t", alpha=0.01), "arch.alpha", ">= 1/32"),
    (lambda: MobileNetV1Arch("t", strides=[2, 2]), "arch.strides", "14 strides"),
    (lambda: MobileNetV1Arch("t", strides=[3] * 14), "arch.strides", "of 1 or 2"),
    (lambda: MobileNetV1Arch("t", activation="gelu"), "arch.activation", "relu or relu6"),
    (lambda: MobileNetV2Arch("t", strides=[1] * 14), "arch.strides", "18 strides"),
    (lambda: MobileNetV2Arch("t", expansion=0), "arch.expansion", "> 0"),
    (lambda: MobileNetV2Arch("t", dropout=1.0), "arch.dropout", "[0, 1)"),
    (lambda: VGGArch("t", width=0), "arch.width", "> 0"),
    (lambda: VGGArch("t", hidden=[64, -1]), "arch.hidden", "positive"),
    (lambda: VGGArch("t", depths=[]), "arch.depths", "non-empty"),
    (lambda: DSCNNArch("t", num_blocks=0), "arch.num_blocks", ">= 1"),
    (lambda: DSCNNArch("t", stem_dropout=-0.1), "arch.stem_dropout", "[0, 1)"),
]


@pytest.mark.parametrize(("make", "key", "hint"), BAD, ids=[f"{k}-{h}" for _, k, h in BAD])
def test_bad_values_name_the_key_in_one_line(make, key, hint):
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert message.startswith(f"{key}:") and hint in message and "\n" not in message


TOO_SMALL = [
    (ResNetArch("t", depths=[1] * 5, widths=[8] * 5), (1, 8, 8), "arch.depths",
     "4 stride-2 blocks: needs images of at least 9x9, dataset gives 8x8"),
    (MobileNetV1Arch("t", strides=[2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]), (1, 8, 8),
     "arch.strides", "5 stride-2 layers: needs images of at least 17x17, dataset gives 8x8"),
    (MobileNetV2Arch("t", strides=[2] * 5 + [1] * 13), (3, 28, 12), "arch.strides",
     "needs images of at least 17x17, dataset gives 28x12"),
    (DSCNNArch("t"), (1, 1, 10), "arch", "needs images of at least 2x2, dataset gives 1x10"),
]


@pytest.mark.parametrize(("spec", "shape", "key", "message"), TOO_SMALL,
                         ids=[k for _, _, k, _ in TOO_SMALL])
def test_inputs_too_small_for_the_downsampling_are_refused(spec, shape, key, message):
    with pytest.raises(ConfigError) as err:
        spec.check_input(shape)
    assert str(err.value).startswith(f"{key}:") and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", [ResNetArch("t"), MobileNetV1Arch("t"), MobileNetV2Arch("t"),
                                  VGGArch("t"), DSCNNArch("t"),
                                  ResNetArch("t", depths=[1] * 4, widths=[8] * 4),
                                  MobileNetV1Arch("t", strides=[2, 1, 2, *[1] * 11])])
def test_digits_and_mlperf_inputs_are_accepted(spec):
    for shape in [(1, 8, 8), (1, 49, 10), (3, 32, 32), (3, 96, 96)]:
        spec.check_input(shape)
