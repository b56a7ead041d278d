"""Per-group pruning sensitivity: where can a model be cut, and what does each cut cost?

The classic sensitivity analysis (Han et al. 2015; Distiller's ``sensitivity_analysis``):
prune *one* prunable group at a time, at several ratios, leave the rest of the network
untouched, evaluate, and record how much the metrics move. Groups whose metrics barely
change are where a model can be cut; steep ones should be pruned gently or not at all.

A "group" is one of the dependency groups
:func:`~tinyexp.compress.prune.prune_structured` shrinks: a set of layers whose output
channels must be removed together (a conv and nothing else in a plain chain; the embedding
and every residual writer of a transformer; an LSTM's hidden units). Each group is pruned by
calling ``prune_structured`` itself (L1 ranking) on a deep copy with every width layer
outside the group ignored, so the channel ranking, the LSTM and attention handling and
torch-pruning's quirks are exactly those of the real pruning path, and only that group's
widths change (checked after every prune).

Rows follow ``prune_structured``'s rounding: torch-pruning keeps ``int(width * (1 - ratio))``
channels of a group, so any ratio removes at least one channel, and a ratio that would
keep none leaves the group unpruned (``kept == width``; for attention the count is per
head: 4 heads of 8 dims stay untouched above ratio 0.875).

The ``macs`` of every row are counted on the ONNX export of the (pruned) copy, with the
same counter and opset as the pipeline's ``<stage>/macs``
(:func:`~tinyexp.measure.cost.net_macs`), so the reference row matches ``baseline/macs``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from tinyexp.compress.prune import (
    _WIDTH_LAYERS,
    dependency_graph,
    layer_widths,
    prune_structured,
    unprunable_layers,
)
from tinyexp.compress.tp_patches import L1Importance
from tinyexp.measure.cost import count_params, net_macs

__all__ = ["PrunableGroup", "layer_sensitivity", "prunable_groups"]

NO_GROUP = "(none)"  # ``group`` of the reference row: the unpruned network
_COLUMNS = ("group", "layers", "width", "kept", "ratio", "params", "macs")


@dataclass
class PrunableGroup:
    """One dependency group ``prune_structured`` shrinks as a unit.

    Attributes:
        name: The group's root layer: the first of ``layers`` in module order, e.g.
            ``"encoder.0.0"``; a module name of ``net.named_modules()``.
        layers: Names of every width layer (Conv/Linear/LSTM) whose *output* channels
            shrink with this group, root first, then in module order.
        width: The group's current channel count (output width of the root layer).
    """

    name: str
    layers: list[str]
    width: int


def prunable_groups(net: nn.Module, example_input: torch.Tensor) -> list[PrunableGroup]:
    """The dependency groups ``prune_structured`` would shrink, in network order.

    Traces ``net`` with :func:`~tinyexp.compress.prune.dependency_graph` (as
    ``prune_structured`` does) and lists every group rooted at a Conv/Linear/LSTM layer.
    Groups containing a layer of :func:`~tinyexp.compress.prune.unprunable_layers` (output
    layers, bidirectional / projected LSTMs) are excluded. Groups are ordered by their
    root's position in ``net.named_modules()``, which is the order the layers run in for
    every model in :mod:`tinyexp.models`.

    Args:
        net: The model; not modified (its train/eval mode is restored).
        example_input: A batch the model accepts, used for tracing.

    Returns:
        One :class:`PrunableGroup` per prunable group.
    """
    was_training = net.training
    net.eval()  # dropout off while tracing, like prune_structured
    try:
        graph = dependency_graph(net, example_input)
    finally:
        net.train(was_training)

    modules = dict(net.named_modules())
    names = {m: name for name, m in modules.items()}
    order = {m: i for i, m in enumerate(modules.values())}
    widths = layer_widths(net)
    groups: list[PrunableGroup] = []
    for group in graph.get_all_groups(
        ignored_layers=unprunable_layers(net, graph), root_module_types=_WIDTH_LAYERS
    ):
        members: list[nn.Module] = []
        for dep, _ in group:
            m = dep.target.module
            if (
                isinstance(m, _WIDTH_LAYERS)
                and graph.is_out_channel_pruning_fn(dep.handler)
                and m not in members
            ):
                members.append(m)
        members.sort(key=lambda m: order[m])
        layers = [names[m] for m in members]
        groups.append(PrunableGroup(name=layers[0], layers=layers, width=widths[layers[0]]))
    groups.sort(key=lambda g: order[modules[g.name]])
    return groups


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    out = []
    for r in ratios:
        r = float(r)
        if not 0.0 < r < 1.0:  # also rejects NaN
            raise ValueError(f"every ratio must satisfy 0 < ratio < 1, got {r}")
        out.append(r)
    return out


def _metrics(evaluate: Callable[[nn.Module], dict[str, float]], net: nn.Module) -> dict[str, float]:
    metrics = {str(k): float(v) for k, v in evaluate(net).items()}
    clash = [k for k in metrics if k in _COLUMNS or k.endswith("_delta")]
    if clash:
        raise ValueError(f"evaluate returned reserved metric names: {clash}")
    return metrics


def _row(
    group: str, layers: str, width: int, kept: int, ratio: float, cost: tuple[int, int],
    metrics: dict[str, float], baseline: dict[str, float],
) -> dict[str, Any]:
    params, macs = cost
    row: dict[str, Any] = {
        "group": group, "layers": layers, "width": int(width), "kept": int(kept),
        "ratio": float(ratio), "params": int(params), "macs": int(macs), **metrics,
    }
    for m, v in metrics.items():
        row[f"{m}_delta"] = v - baseline[m] if m in baseline else math.nan
    return row


def _cost(net: nn.Module, example_input: torch.Tensor, opset: int) -> tuple[int, int]:
    """Parameters and MACs (on the ONNX export, as the pipeline counts them) of ``net``."""
    return count_params(net), net_macs(net, example_input, opset=opset)


def _prune_group(
    net: nn.Module, example_input: torch.Tensor, group: PrunableGroup, ratio: float
) -> nn.Module:
    """Prune ``ratio`` of one group of ``net`` in place, leaving every other width as is.

    Runs :func:`~tinyexp.compress.prune.prune_structured` (L1 ranking) with every width layer
    outside ``group.layers`` ignored, so the ranking is exactly the one the pruning stage uses.

    Args:
        net: The model (usually a deep copy); layers are looked up by ``group.layers`` name.
        example_input: A batch the model accepts.
        group: The group to prune, from :func:`prunable_groups` on ``net`` (or its original).
        ratio: Fraction of the group's channels to remove, ``0 < ratio < 1``.

    Returns:
        ``net``.

    Raises:
        ValueError: If ``ratio`` is out of range or a layer of ``group`` is not in ``net``.
        RuntimeError: If pruning changed the width of a layer outside the group.
    """
    (ratio,) = _check_ratios([ratio])
    modules = dict(net.named_modules())
    missing = [name for name in group.layers if name not in modules]
    if missing:
        raise ValueError(f"layers of group {group.name!r} not found in the model: {missing}")
    inside = set(group.layers)
    others = [
        m for name, m in modules.items() if isinstance(m, _WIDTH_LAYERS) and name not in inside
    ]
    before = layer_widths(net)
    _, report = prune_structured(
        net, example_input, ratio, importance=L1Importance(), ignored_layers=others
    )
    changed = {name for name, w in report.widths_after.items() if before.get(name) != w}
    if not changed <= inside:
        raise RuntimeError(
            f"pruning group {group.name!r} also changed {sorted(changed - inside)}: "
            "torch-pruning coupled it with another group"
        )
    return net


def layer_sensitivity(
    net: nn.Module,
    example_input: torch.Tensor,
    evaluate: Callable[[nn.Module], dict[str, float]],
    ratios: Sequence[float],
    finetune: Callable[[nn.Module], None] | None = None,
    *,
    opset: int,
) -> list[dict[str, Any]]:
    """Prune each prunable group alone at each ratio and measure what it costs.

    For each group of :func:`prunable_groups` and each ratio: deep-copy ``net``, prune
    only that group by ``ratio`` (L1, same ranking as the pruning stage), optionally
    ``finetune(copy)``, then ``evaluate(copy)``. The reference row evaluates a copy of
    the unpruned network, without finetuning. ``net`` itself is never modified.

    Args:
        net: The trained model to analyse; left untouched (weights and train/eval mode).
        example_input: A batch the model accepts, used for tracing and for the ONNX export
            the MACs are counted on.
        evaluate: ``evaluate(model) -> {"metric": value, ...}``; receives a model in
            ``net``'s train/eval mode, so set the mode it needs (usually ``eval()``).
        ratios: Fractions of a group's channels to remove, each ``0 < ratio < 1``.
        finetune: Called as ``finetune(copy)`` once per (group, ratio) after pruning,
            before evaluating; the copy is put back into ``net``'s mode afterwards.
        opset: ONNX opset of the exports the MACs are counted on (``measure.opset``).

    Returns:
        Plain dict rows: first the unpruned network (``group`` ``"(none)"``, ratio 0.0,
        empty ``layers``, ``width`` and ``kept`` 0), then group by group, ratio by
        ratio. Keys: ``group`` (root layer name), ``layers`` (the group's layer names
        joined by ``+``), ``width`` (root width before), ``kept`` (root width after),
        ``ratio``, ``params``, ``macs`` (of the pruned copy, before finetuning, which does
        not change them), every metric returned by ``evaluate`` and, for each metric
        ``m``, ``m_delta`` = value minus the unpruned value (0.0 in the reference row).

    Raises:
        ValueError: If a ratio is not in ``(0, 1)`` or ``evaluate`` returns a metric
            named like a row key (``group``, ``params``, ... or ``*_delta``).
    """
    ratios = _check_ratios(ratios)
    was_training = net.training
    groups = prunable_groups(net, example_input)

    reference = copy.deepcopy(net)
    cost = _cost(reference, example_input, opset)
    baseline = _metrics(evaluate, reference)
    del reference
    rows = [_row(NO_GROUP, "", 0, 0, 0.0, cost, baseline, baseline)]

    for group in groups:
        for ratio in ratios:
            pruned = _prune_group(copy.deepcopy(net), example_input, group, ratio)
            cost = _cost(pruned, example_input, opset)
            if finetune is not None:
                finetune(pruned)
                pruned.train(was_training)
            kept = layer_widths(pruned)[group.name]
            metrics = _metrics(evaluate, pruned)
            rows.append(_row(
                group.name, "+".join(group.layers), group.width, kept, ratio, cost,
                metrics, baseline,
            ))
    net.train(was_training)
    return rows
