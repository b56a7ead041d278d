"""Fold each BatchNorm into the convolution or linear layer that feeds it.

In eval mode a BatchNorm is a per-channel affine map, ``y = gamma * (x - mean) / std + beta``,
so the layer before it can absorb it: its weights scaled by ``gamma / std`` per output
channel, its bias becoming ``(bias - mean) * gamma / std + beta``. ONNX export folds it the
same way for post-training quantization; quantization-aware training has to fold it first,
so it trains (and quantizes) the weights the deployed graph will hold and no float
BatchNorm is left in that graph.

The pairs come from a ``torch.fx`` trace: a BatchNorm whose only input is a Conv/ConvTranspose
/Linear module that feeds nothing else, each called once. A BatchNorm elsewhere (after a
ReLU, after a layer whose output branches, or in a network FX cannot trace) stays as it is.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.fx
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["fold_batchnorm", "unfolded_batchnorms"]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def unfolded_batchnorms(net: nn.Module) -> list[str]:
    """Names of the BatchNorm modules in ``net``."""
    return [name for name, m in net.named_modules() if isinstance(m, _BatchNorm)]


def _pairs(net: nn.Module) -> list[tuple[str, str]]:
    """``(layer, batchnorm)`` module names where the BatchNorm folds into the layer."""
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as err:  # data-dependent control flow and the like: fold nothing
        log.warning("fold_batchnorm: cannot trace %s (%s); BatchNorm left unfolded",
                    type(net).__name__, err)
        return []
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        bn = modules[node.target]
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"):
            continue
        layer = modules[src.target]
        if (isinstance(layer, (*_CONV, *_CONV_T, nn.Linear)) and len(src.users) == 1
                and calls[src.target] == calls[node.target] == 1
                and bn.track_running_stats and bn.running_var is not None
                and _out_channels(layer) == bn.num_features):
            pairs.append((src.target, node.target))
    return pairs


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@torch.no_grad()
def _fold(layer: nn.Module, bn: _BatchNorm) -> None:
    scale = bn.running_var.add(bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    w = layer.weight
    if isinstance(layer, _CONV_T):
        # weight is (in, out / groups, *kernel): output channel g * (out / groups) + j sits in
        # group g's rows at column j
        groups, per_group = layer.groups, w.shape[1]
        view = w.view(groups, w.shape[0] // groups, per_group, *w.shape[2:])
        view.mul_(scale.view(groups, 1, per_group, *[1] * (w.dim() - 2)))
    else:
        w.mul_(scale.view(-1, *[1] * (w.dim() - 1)))  # (out, ...) for Conv and Linear
    bias = shift if layer.bias is None else layer.bias * scale + shift
    layer.bias = nn.Parameter(bias.detach().clone())


def fold_batchnorm(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``net`` with each foldable BatchNorm folded into its layer; ``net`` is kept.

    The folded BatchNorms become ``nn.Identity``, so every other module keeps its name; the
    result computes what ``net`` computes in eval mode. A BatchNorm after a ``Linear`` folds
    only where it normalises the Linear's features (a 2-D input): ``example`` is run through
    the traced network to tell.

    Args:
        net: A float network, pruned or not.
        example: An input batch ``net`` accepts.

    Returns:
        The folded copy, in the train/eval mode of ``net``. :func:`unfolded_batchnorms` lists
        the BatchNorms it still holds.
    """
    folded = copy.deepcopy(net)
    pairs = _pairs(folded)
    linear_outputs = _linear_output_ranks(folded, example, pairs)
    for layer_name, bn_name in pairs:
        layer = folded.get_submodule(layer_name)
        if isinstance(layer, nn.Linear) and linear_outputs.get(layer_name) != 2:
            continue  # BatchNorm1d on (B, T, F) normalises T, not the Linear's features
        _fold(layer, folded.get_submodule(bn_name))
        parent_name, _, child = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent_name) if parent_name else folded, child,
                nn.Identity())
    left = unfolded_batchnorms(folded)
    if left:
        log.warning("fold_batchnorm: %s not folded (no Conv/Linear feeding only it)",
                    ", ".join(left))
    return folded


@torch.no_grad()
def _linear_output_ranks(net: nn.Module, example: torch.Tensor,
                         pairs: list[tuple[str, str]]) -> dict[str, int]:
    """Rank of the output of each Linear among ``pairs``, seen on ``example``."""
    names = {layer for layer, _ in pairs if isinstance(net.get_submodule(layer), nn.Linear)}
    if not names:
        return {}
    ranks: dict[str, int] = {}
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: ranks.__setitem__(n, out.dim())) for n in names]
    training = net.training
    try:
        net.eval()(example)
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    return ranks
