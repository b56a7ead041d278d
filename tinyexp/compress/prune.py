"""Structured pruning on top of torch-pruning's dependency graph, with any channel ranking.

``prune_structured`` removes whole channels / hidden units / head dimensions — not single
weights — so the pruned network is genuinely smaller and faster, and still a plain
``nn.Module`` that runs and exports to ONNX. torch-pruning (``tp``) traces the network
once, groups every layer that must shrink together (a conv's output channels with the
next conv's input channels, a residual stream with every block that reads/writes it,
...) and removes the channels of each group that the given importance ranks lowest: the
criterion is a ``tp`` importance object (:class:`~tinyexp.compress.tp_patches.L1Importance`
for group L1 norm, ``tp.importance.RandomImportance()`` for a random baseline, ...), and
nothing else depends on it. By default every group loses the same share; an
:class:`Allocation` sets shares per group or ranks all groups' channels together. How many
channels a group keeps is one rule, :func:`~tinyexp.compress.tp_pruner.kept_channels`: a
larger ratio never keeps more, and a group that can shrink never keeps all or none; a group
that was meant to shrink and did not is named in the report (``groups_unchanged``).

What ``tp`` 1.6.1 lacks for our models (an ``nn.LSTM`` handler, LSTM-aware tracing and
scoring, attention head bookkeeping) lives in :mod:`tinyexp.compress.tp_patches`; this
module holds the procedure. The pruned model's MACs are not counted here: the pipeline
measures every stage on its exported ONNX file (:func:`tinyexp.measure.cost.net_macs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from tinyexp.compress.tp_patches import (
    LSTMPruner,
    attention_modules,
    sync_heads,
    traceable_forward,
)
from tinyexp.compress.tp_pruner import WidthPruner, kept_channels
from tinyexp.measure.cost import count_params

__all__ = [
    "Allocation",
    "PruneReport",
    "UnknownLayerError",
    "accumulate_gradients",
    "dependency_graph",
    "kept_channels",
    "layer_widths",
    "output_layers",
    "prune_structured",
    "unprunable_layers",
]

# Layers that define a feature width (the roots of tp's pruning groups).
_WIDTH_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM)


def layer_widths(net: nn.Module) -> dict[str, int]:
    """Output width of every Conv/Linear/LSTM layer (channels, features or hidden units)."""
    widths: dict[str, int] = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            widths[name] = m.out_features
        elif isinstance(m, nn.LSTM):
            widths[name] = m.hidden_size
    return widths


@dataclass
class PruneReport:
    """What one ``prune_structured`` call did; logged by the pipeline.

    Attributes:
        ratio: Pruning ratio asked for (fraction of channels removed per group).
        steps: Number of iterative pruning steps.
        params_before: Parameter count before pruning.
        params_after: Parameter count after pruning.
        groups_pruned: Dependency groups actually shrunk, summed over steps.
        widths_before: Output width of every Conv/Linear/LSTM layer before pruning.
        widths_after: The same widths after pruning.
        heads_after: ``num_heads``/``head_dim`` of each attention module after pruning.
        groups: ``{group: (width, ratio)}`` of every prunable group: its width as counted
            (channels; dims per head for attention) and the ratio meant for it (the overall
            ratio for a globally ranked group).
        groups_unchanged: The groups meant to shrink (ratio > 0) that kept their width: too
            narrow to shrink (1 channel, or not wider than ``round_to``), unscored by the
            importance, or, under global ranking, ranked above every pruned channel.
    """

    ratio: float
    steps: int
    params_before: int
    params_after: int
    groups_pruned: int
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    heads_after: dict[str, tuple[int, int]] = field(default_factory=dict)
    groups: dict[str, tuple[int, float]] = field(default_factory=dict)
    groups_unchanged: list[str] = field(default_factory=list)


@dataclass
class Allocation:
    """How ``prune_structured`` shares the pruning out; the default: ``ratio`` of every group.

    Attributes:
        layer_ratios: ``{group name: ratio}``: these groups lose their own share, in [0, 1)
            (0 keeps a group whole). A group is named by its root layer, as in
            ``net.named_modules()`` and :func:`~tinyexp.compress.sensitivity.prunable_groups`
            (the ``group`` column of ``layer_sensitivity.csv``).
        global_ranking: rank the channels of all other groups together (tp's global pruning):
            ``ratio`` of their channels goes, the least important first wherever they are, so
            widths come out non-uniform. Scores are normalised per group (mean 1) first.
        max_layer_ratio: with ``global_ranking``, the most any one group may lose: it keeps
            ``int(width * (1 - max_layer_ratio))`` channels, at least 1 (``round_to`` may take
            up to ``round_to - 1`` more). ``ratio`` and ``layer_ratios`` must not exceed it.
    """

    layer_ratios: Mapping[str, float] = field(default_factory=dict)
    global_ranking: bool = False
    max_layer_ratio: float = 0.9


class UnknownLayerError(ValueError):
    """A ``layer_ratios`` name that is no prunable group of the network."""

    def __init__(self, name: str, allowed: Sequence[str]) -> None:
        super().__init__(f"layer_ratios: {name!r} is not a prunable group; "
                         f"allowed: {', '.join(allowed)}")
        self.name, self.allowed = name, list(allowed)


def accumulate_gradients(
    net: nn.Module, batches: Iterable[Any], loss: Callable[[nn.Module, Any], torch.Tensor]
) -> int:
    """Set every gradient of ``net`` to the sum of ``loss(net, batch)``'s over ``batches``.

    What a gradient-based importance (:class:`~tinyexp.compress.tp_patches.TaylorImportance`)
    reads; pass it as ``prune_structured``'s ``before_step``. Parameters the loss does not
    reach get zero gradients. Returns the number of batches.

    Raises:
        ValueError: If ``batches`` is empty.
    """
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    n = 0
    with torch.enable_grad():
        for batch in batches:
            loss(net, batch).backward()
            n += 1
    if n == 0:
        raise ValueError("accumulate_gradients: no batch to compute gradients on")
    return n


def dependency_graph(net: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``net``, traced with our LSTM handler."""
    return tp.DependencyGraph().build_dependency(
        net,
        example_input,
        forward_fn=traceable_forward,
        customized_pruners={nn.LSTM: LSTMPruner()},
        verbose=False,
    )


def output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Width-defining layers whose outputs reach the network output directly.

    Their output channels fix the output shape (reconstruction channels, class logits),
    so they must not be pruned. Found by walking back from the graph's sinks (nodes
    nothing reads: the outputs) through shape-preserving ops (activations, norms,
    reshapes, additions) to the first Conv/Linear/LSTM on each path.
    """
    found: list[nn.Module] = []
    # tp only adds an explicit output node when the last op is not a module, so use sinks
    stack = [n for n in graph.module2node.values() if not n.outputs]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, _WIDTH_LAYERS):
            if node.module not in found:
                found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


def unprunable_layers(net: nn.Module, graph: tp.DependencyGraph) -> list[nn.Module]:
    """Layers whose output channels are never pruned, whatever the caller ignores.

    The output layers (:func:`output_layers`: they fix the output shape) and the LSTMs
    :class:`~tinyexp.compress.tp_patches.LSTMPruner` cannot shrink (bidirectional or
    projected). ``graph`` is :func:`dependency_graph` of ``net``.
    """
    lstms = [
        m for m in net.modules()
        if isinstance(m, nn.LSTM) and not LSTMPruner.prunes_hidden_units(m)
    ]
    return [*output_layers(graph), *lstms]


def prune_structured(
    net: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    *,
    importance: tp.importance.Importance,
    steps: int = 1,
    before_step: Callable[[nn.Module], None] | None = None,
    finetune: Callable[[nn.Module], None] | None = None,
    round_to: int | None = None,
    ignored_layers: Sequence[nn.Module] = (),
    allocation: Allocation | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Prune ``ratio`` of every prunable group of ``net`` in place, ranked by ``importance``.

    Channels of convs, Linear hidden units, LSTM hidden units, attention head dims and
    the transformer residual width all shrink by ``ratio`` (per group, uniformly, unless
    ``allocation`` says otherwise): a group of ``width`` keeps
    ``kept_channels(width, ratio, round_to)`` = ``floor(width * (1 - ratio))`` channels,
    rounded down to a multiple of ``round_to``, at least 1 (at least ``round_to``). The input
    channels of the first layer and the output channels of the output layer(s) are kept, so
    input and output shapes do not change.

    Args:
        net: Model to prune; modified in place (its train/eval mode is restored).
        example_input: A batch the model accepts, used for tracing.
        ratio: Fraction of channels to remove, ``0 <= ratio < 1``; ``0`` is a no-op.
        importance: A torch-pruning importance: called on each group, it returns one score
            per channel of the group's root (lowest scores are removed), e.g.
            :class:`~tinyexp.compress.tp_patches.L1Importance` or
            ``tp.importance.RandomImportance()``. An importance that returns ``None`` for a
            group leaves that group unpruned.
        steps: Iterative pruning steps; step ``i`` reaches ``ratio * i / steps``.
        before_step: Called as ``before_step(net)`` before every step, ``net`` in eval mode
            (e.g. :func:`accumulate_gradients` for a gradient-based importance).
        finetune: Called as ``finetune(net)`` after every step (e.g. a few epochs of
            training). Parameters are replaced by pruning, so build optimizers inside it.
        round_to: Keep channel counts multiples of this (e.g. 4/8 for SIMD kernels): counts
            are rounded down, never below ``round_to``; a group not wider than it stays whole.
        ignored_layers: Extra modules whose output channels must not be pruned.
        allocation: Per-group shares and global ranking (:class:`Allocation`); ``None``: every
            group loses ``ratio``.

    Returns:
        The same ``net`` object and a :class:`PruneReport`.

    Raises:
        ValueError: If ``ratio``, ``steps``, ``round_to`` or an ``allocation`` value is out of
            range; :class:`UnknownLayerError` if ``layer_ratios`` names no prunable group.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must satisfy 0 <= ratio < 1, got {ratio}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps}")
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    steps = int(steps)
    allocation = allocation or Allocation()
    _check_allocation(allocation, ratio)

    was_training = net.training
    net.eval()  # dropout off: tracing must be deterministic
    params_before = count_params(net)
    widths_before = layer_widths(net)

    attention = attention_modules(net)
    # a trace of our own to find the output layers (BasePruner then builds its own graph)
    graph = dependency_graph(net, example_input)
    ignored = [*unprunable_layers(net, graph), *ignored_layers]
    ratio_dict = _ratio_dict(net, example_input, allocation.layer_ratios)
    # the cap is global ranking's guard only: tp would also apply it to layer_ratios and stop
    # ranking a group past it between steps, which uniform pruning has never done
    capped = allocation.global_ranking

    pruner = WidthPruner(
        net,
        example_input,
        importance=importance,
        pruning_ratio=ratio,
        pruning_ratio_dict=ratio_dict or None,
        global_pruning=allocation.global_ranking,
        max_pruning_ratio=allocation.max_layer_ratio if capped else 1.0,
        iterative_steps=steps,
        ignored_layers=ignored,
        round_to=round_to,
        num_heads={m.qkv: m.num_heads for m in attention.values()},
        prune_head_dims=True,  # keep every head, shrink each head's dims
        prune_num_heads=False,
        customized_pruners={nn.LSTM: LSTMPruner()},
        forward_fn=traceable_forward,
        # fresh dicts: tp's defaults are shared mutable dicts that it writes into
        in_channel_groups={},
        out_channel_groups={},
    )

    groups_pruned = 0
    for _ in range(steps):
        if before_step is not None:
            before_step(net)
            net.eval()
        for group in pruner.step(interactive=True):
            group.prune()
            groups_pruned += 1
        sync_heads(attention, pruner)  # forward reads them: match the pruned qkv
        if finetune is not None:
            finetune(net)
            net.eval()

    widths_after = layer_widths(net)
    report = PruneReport(
        ratio=float(ratio),
        steps=steps,
        params_before=params_before,
        params_after=count_params(net),
        groups_pruned=groups_pruned,
        widths_before=widths_before,
        widths_after=widths_after,
        heads_after={name: (m.num_heads, m.head_dim) for name, m in attention.items()},
        groups=dict(pruner.plan),
        groups_unchanged=[name for name, (_, r) in pruner.plan.items()
                          if r > 0 and widths_after[name] == widths_before[name]],
    )
    net.train(was_training)
    return net, report


def _check_allocation(allocation: Allocation, ratio: float) -> None:
    cap = allocation.max_layer_ratio
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"max_layer_ratio must satisfy 0 < max_layer_ratio <= 1, got {cap}")
    for name, r in allocation.layer_ratios.items():
        if not 0.0 <= r < 1.0:
            raise ValueError(f"layer_ratios: {name!r} must satisfy 0 <= ratio < 1, got {r}")
    if allocation.global_ranking:
        # the cap keeps a share of every group: a larger overall ratio cannot be met
        worst = max([ratio, *allocation.layer_ratios.values()])
        if worst > cap:
            raise ValueError(f"ratio {worst} exceeds max_layer_ratio {cap} under global ranking")


def _ratio_dict(
    net: nn.Module, example_input: torch.Tensor, layer_ratios: Mapping[str, float]
) -> dict[nn.Module, float]:
    """tp's ``pruning_ratio_dict`` (keyed by module) for ``{group name: ratio}``."""
    if not layer_ratios:
        return {}
    from tinyexp.compress.sensitivity import prunable_groups  # it imports this module

    allowed = [g.name for g in prunable_groups(net, example_input)]
    for name in layer_ratios:
        if name not in allowed:
            raise UnknownLayerError(name, allowed)
    return {net.get_submodule(name): float(r) for name, r in layer_ratios.items()}
