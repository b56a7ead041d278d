"""Depth pruning's surgery: cut after a block, freeze the kept part, attach an auxiliary head;
the result keeps the zoo's contract, so it trains, exports, runs in ONNX Runtime and prunes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tinyexp.compress.depth import (
    AuxiliaryHead,
    CutNetwork,
    block_count,
    cut_network,
    features,
)
from tinyexp.measure.cost import count_params

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = 5


def conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(ch, ch), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.BatchNorm2d(ch))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class BlockNet(nn.Module):
    """The zoo's contract in miniature: stem, 4 blocks (a plain one, a residual one, a
    depthwise-separable one with dropout, a plain one), pooling + linear head."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels, self.image_size = 3, 16
        self.stem = conv_bn_relu(3, 8)
        self.blocks = nn.Sequential(
            conv_bn_relu(8, 16, stride=2),
            Residual(16),
            nn.Sequential(conv_bn_relu(16, 16, groups=16), nn.Conv2d(16, 24, 1, bias=False),
                          nn.BatchNorm2d(24), nn.ReLU(), nn.Dropout(0.2)),
            conv_bn_relu(24, 32, stride=2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build(seed: int = 0) -> BlockNet:
    torch.manual_seed(seed)
    return BlockNet()


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in module.named_buffers() if "running" in name]


# ----------------------------------------------------------------------------- the cut


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_cut_keeps_the_first_blocks_and_classifies_from_their_features(cut):
    net, x = build(), images()
    channels = features(net, cut, x).shape[1]
    cut_net = cut_network(net, cut, x, head_convs=1)
    assert isinstance(cut_net, CutNetwork) and len(cut_net.blocks) == cut
    assert block_count(cut_net) == cut  # the contract holds: it can be cut again
    assert cut_net.head[0][0].in_channels == channels == cut_net.head[0][3].out_channels
    assert cut_net.num_classes == CLASSES and cut_net.image_size == 16
    assert cut_net(x).shape == (2, CLASSES)
    with torch.no_grad():  # the kept part computes what it computed in the full network
        assert torch.equal(cut_net.eval().blocks(cut_net.stem(x)), features(net, cut, x))


def test_the_head_takes_its_width_and_number_of_convs():
    net, x = build(), images()
    head = cut_network(net, 2, x, head_width=12, head_convs=2).head
    assert isinstance(head, AuxiliaryHead)
    assert [m.out_channels for m in head.modules() if isinstance(m, nn.Conv2d)] == [16, 12, 12, 12]
    assert head[-1].in_features == 12
    bare = cut_network(net, 2, x, head_width=12, head_convs=0).head
    assert [type(m) for m in bare] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert bare[-1].in_features == 16  # the width is that of the cut: no conv to widen it


def test_earlier_cuts_leave_fewer_parameters_and_the_original_untouched():
    net, x = build(), images()
    before = copy.deepcopy(net.state_dict())
    sizes = [count_params(cut_network(net, k, x)) for k in (1, 2, 3)]
    assert sizes == sorted(sizes) and sizes[-1] < count_params(net)
    cut_net = cut_network(net, 3, x)
    with torch.no_grad():
        cut_net.stem[0].weight.add_(1.0)  # a copy: training it leaves the network alone
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("cut", [0, 4, 9])
def test_a_cut_outside_the_blocks_is_refused(cut):
    with pytest.raises(ValueError, match=r"cut must be in 1\.\.3 for BlockNet \(4 blocks\)"):
        cut_network(build(), cut, images())


def test_a_network_without_blocks_cannot_be_cut():
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    assert block_count(flat) is None and block_count(build()) == 4
    with pytest.raises(ValueError, match="Sequential has no stem, blocks"):
        cut_network(flat, 1, images())


# ----------------------------------------------------------------------------- freezing


def test_training_a_frozen_cut_changes_only_the_head():
    """All parameters go to the optimizer, as tinyexp.lit does: the frozen ones get no gradient
    (Adam skips them) and their BatchNorm statistics stay the trained network's."""
    torch.manual_seed(0)
    cut_net = cut_network(build(), 3, images()).train()
    assert cut_net.frozen and not cut_net.blocks.training and not cut_net.stem[1].training
    assert cut_net.head.training
    kept = {k: v.clone() for k, v in cut_net.state_dict().items() if not k.startswith("head")}
    head = [p.clone() for p in cut_net.head.parameters()]
    head_stats = _bn_stats(cut_net.head)
    optimizer = torch.optim.Adam(cut_net.parameters(), lr=0.01)
    for step in range(3):
        loss = nn.functional.cross_entropy(cut_net(images(8, seed=step)),
                                           torch.arange(8) % CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(v, cut_net.state_dict()[k]) for k, v in kept.items())
    assert all(p.grad is None for p in cut_net.blocks.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(head, cut_net.head.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(head_stats, _bn_stats(cut_net.head),
                                                     strict=True))


def test_thawing_makes_the_whole_network_trainable_again():
    cut_net = cut_network(build(), 2, images(), freeze=True)
    assert not any(p.requires_grad for p in cut_net.blocks.parameters())
    cut_net.freeze(False).train()
    assert not cut_net.frozen and all(p.requires_grad for p in cut_net.parameters())
    assert all(m.training for m in cut_net.modules())
    unfrozen = cut_network(build(), 2, images(), freeze=False).train()
    assert all(m.training for m in unfrozen.modules())


# ----------------------------------------------------------------------------- what follows


def test_a_cut_network_exports_to_onnx_and_runs_the_same_in_onnx_runtime(tmp_path):
    from tinyexp.measure.cost import export_onnx, ort_session

    x = images(1)
    cut_net = cut_network(build(), 2, x, head_width=12).eval()
    path = export_onnx(cut_net, x, tmp_path / "cut.onnx", opset=17)
    session = ort_session(path)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, cut_net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_cut_network_prunes_structurally_and_keeps_its_classes():
    from tinyexp.compress.prune import prune_structured
    from tinyexp.compress.tp_patches import L1Importance

    x = images(2)
    cut_net = cut_network(build(), 3, x, head_width=16).freeze(False)
    before = count_params(cut_net)
    pruned, report = prune_structured(cut_net, x, 0.5, importance=L1Importance())
    assert report.params_after < 0.6 * before
    assert pruned.head[-1].out_features == CLASSES and pruned(x).shape == (2, CLASSES)


# ----------------------------------------------------------------------------- the zoo

# arch -> (input channels, image size) of a small input it accepts
ZOO = {"mobilenet_v1": (3, 32), "mobilenet_v2": (3, 32), "resnet": (3, 32), "vgg": (3, 32),
       "ds_cnn": (1, [49, 10])}


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_every_zoo_architecture_cuts_in_the_middle_and_exports(arch, tmp_path):
    """As the run builds it (conf/arch/<arch>.yaml): cut after its middle block."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from support import CONF

    from tinyexp.config import constructor_kwargs
    from tinyexp.measure.cost import export_onnx, ort_session

    path = CONF / "arch" / f"{arch}.yaml"
    if not path.is_file():
        pytest.skip(f"no {path.name} yet")
    node = OmegaConf.load(path)
    pytest.importorskip(node._target_.rpartition(".")[0])
    channels, size = ZOO[arch]
    torch.manual_seed(0)
    net = instantiate(constructor_kwargs(node), in_channels=channels, num_classes=4,
                      image_size=size)
    side = size if isinstance(size, list) else [size, size]
    x = torch.randn(1, channels, *side)
    count = block_count(net)
    assert count is not None and count >= 2, f"arch={arch} has no blocks to cut"
    cut_net = cut_network(net, count // 2, x).eval()
    assert count_params(cut_net) < count_params(net)
    onnx_path = export_onnx(cut_net, x, tmp_path / f"{arch}.onnx", opset=17)
    session = ort_session(onnx_path)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, cut_net(x).numpy(), rtol=1e-3, atol=1e-4)
