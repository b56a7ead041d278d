"""BatchNorm folding: the folded network computes what the unfolded one does in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from nets import SMALL, build, sample

from tinyexp.compress.fold import fold_batchnorm, unfolded_batchnorms

CASES = [pytest.param(a, p, id=f"{a}-{'pruned' if p else 'full'}")
         for a in [*SMALL, "custom_cnn"] for p in (False, True)]


def with_bn_statistics(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """``net`` in eval mode, its BatchNorms holding non-trivial running stats and affine."""
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
        for _ in range(3):
            net(x * 3 + 1)  # statistics far from (0, 1), so the fold has work to do
    return net.eval()


@pytest.mark.parametrize(("arch", "pruned"), CASES)
def test_folded_net_computes_the_same_in_eval_mode(arch, pruned):
    x = sample(arch, 32)
    net = with_bn_statistics(build(arch, pruned=pruned), sample(arch, 64, seed=2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net, x[:1])
    assert unfolded_batchnorms(folded) == []
    assert not folded.training
    with torch.no_grad():
        ref, got = net(x), folded(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    # the input network is untouched
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    if "custom_cnn" in arch:
        assert unfolded_batchnorms(net) == ["features.0.1", "features.1.1"]
        assert isinstance(folded.features[0][1], nn.Identity)
        assert folded.features[0][0].bias is not None  # the BatchNorm's shift lives here now


class Mixed(nn.Module):
    """Every case the folder must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(4, 6, 3, padding=1, groups=2, bias=False)
        self.up_bn = nn.BatchNorm1d(6)                  # folds: grouped transposed conv
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.after_relu_bn = nn.BatchNorm1d(6)          # stays: a ReLU sits between
        self.branch = nn.Conv1d(6, 6, 1)
        self.branch_bn = nn.BatchNorm1d(6)              # stays: the conv output is used twice
        self.seq = nn.Linear(6, 6)
        self.seq_bn = nn.BatchNorm1d(8)                 # stays: normalises time, not features
        self.fc = nn.Linear(48, 5)
        self.fc_bn = nn.BatchNorm1d(5, affine=False)    # folds: 2-D input, no affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, 8)
        h = self.conv(self.up_bn(self.up(x)))
        h = self.after_relu_bn(torch.relu(h))
        b = self.branch(h)
        h = self.branch_bn(b) + b
        h = self.seq_bn(self.seq(h.transpose(1, 2)))    # (B, 8, 6): BatchNorm1d over dim 1
        return self.fc_bn(self.fc(h.flatten(1)))


def test_only_batchnorms_fed_by_their_own_layer_fold():
    torch.manual_seed(0)
    x = torch.randn(16, 4, 8)
    net = with_bn_statistics(Mixed(), x)
    folded = fold_batchnorm(net, x[:2])
    assert unfolded_batchnorms(folded) == ["after_relu_bn", "branch_bn", "seq_bn"]
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


def test_train_mode_is_kept_and_an_untraceable_net_is_left_alone():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 1)
            self.bn = nn.BatchNorm1d(2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    net = Untraceable().train()
    folded = fold_batchnorm(net, torch.randn(2, 2, 3))
    assert folded.training and folded is not net
    assert unfolded_batchnorms(folded) == ["bn"]
