"""Structured L1-norm pruning on top of torch-pruning's dependency graph.

``prune_l1`` removes whole channels / hidden units / head dimensions — not single
weights — so the pruned network is genuinely smaller and faster, and still a plain
``nn.Module`` that runs and exports to ONNX. torch-pruning (``tp``) traces the network
once, groups every layer that must shrink together (a conv's output channels with the
next conv's input channels, a residual stream with every block that reads/writes it,
...) and ranks each group by the L1 norm of its weights.

Three gaps in torch-pruning 1.6.1 are filled here:

* ``nn.LSTM``: the built-in handler is broken (asserts on multi-layer LSTMs, prunes the
  wrong axis of ``weight_ih``), so :class:`LSTMPruner` replaces it, and
  :class:`L1Importance` scores LSTM weights (tp's magnitude importance skips them, which
  would silently leave LSTM-only groups unpruned).
* Attention: modules in timm's layout (``qkv`` Linear + ``num_heads``/``head_dim``
  attributes) are found automatically; tp shrinks every head's dims and we write the new
  ``num_heads``/``head_dim`` back afterwards.
* MACs: tp's RNN counter ignores ``batch_first``; :func:`count_macs` patches that.

The LSTM handler, tracing and scoring helpers live in :mod:`tinyexp.compress.lstm_pruner`.

A pruned model no longer matches its class's constructor, so its ``state_dict`` cannot be
loaded into a freshly built model: use :func:`save_pruned` / :func:`load_pruned`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils import op_counter

from tinyexp.compress.lstm_pruner import (
    LSTMPruner,
    _lstm_input_l1,
    _lstm_macs_hook,
    _lstm_unit_l1,
    _traceable_forward,
)

__all__ = [
    "L1Importance",
    "LSTMPruner",
    "PruneReport",
    "count_macs",
    "count_params",
    "dependency_graph",
    "layer_widths",
    "load_pruned",
    "output_layers",
    "prune_l1",
    "save_pruned",
]

# Layers that define a feature width (the roots of tp's pruning groups).
_WIDTH_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM)


# --------------------------------------------------------------------------- importance


class L1Importance(tp.importance.GroupMagnitudeImportance):
    """tp's group L1 importance (``GroupMagnitudeImportance(p=1)``) that also scores LSTMs.

    The stock class only reads Conv/Linear/BatchNorm/LayerNorm weights and returns
    ``None`` for groups without any, which makes the pruner skip them silently — e.g.
    the hidden units between two stacked LSTMs. Here LSTM scores join the others
    before tp's own reduction (mean over layers) and normalisation.
    """

    def __init__(self) -> None:
        super().__init__(p=1)
        self._lstm_terms: list[tuple[torch.Tensor, list[int]]] = []

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        self._lstm_terms = []
        for item in group:
            layer, fn = item.dep.layer, item.dep.pruning_fn
            if not isinstance(layer, nn.LSTM):
                continue
            if getattr(fn, "__func__", None) is LSTMPruner.prune_out_channels:
                local = _lstm_unit_l1(layer, self.p)
            elif getattr(fn, "__func__", None) is LSTMPruner.prune_in_channels:
                local = _lstm_input_l1(layer, self.p)
            else:
                continue
            self._lstm_terms.append((local[item.idxs], item.root_idxs))
        try:
            imp = super().__call__(group)
            if imp is None and self._lstm_terms:  # LSTM-only group: tp bailed out before reducing
                imp = self._normalize(self._reduce([], []), self.normalizer)
            return imp
        finally:
            self._lstm_terms = []

    def _reduce(self, group_imp: list[torch.Tensor], group_idxs: list[list[int]]):
        terms = [t for t, _ in self._lstm_terms]
        idxs = [i for _, i in self._lstm_terms]
        return super()._reduce(terms + list(group_imp), idxs + list(group_idxs))


# --------------------------------------------------------------------------- counting


def count_params(net: nn.Module) -> int:
    """Total number of parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one forward pass on ``example_input`` (per sample), via tp's op counter.

    Counts layer ops only (Conv/Linear/LSTM/norms/activations); the attention
    ``q @ k^T`` and ``att @ v`` products are not included.
    """
    op_counter.CUSTOM_MODULES_MAPPING = {nn.LSTM: _lstm_macs_hook}
    try:
        macs, _ = tp.utils.count_ops_and_params(net, example_input)
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = {}
    return int(macs)


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


# --------------------------------------------------------------------------- pruning


@dataclass
class PruneReport:
    """What one ``prune_l1`` call did; logged by the pipeline.

    Attributes:
        ratio: Pruning ratio asked for (fraction of channels removed per group).
        steps: Number of iterative pruning steps.
        params_before: Parameter count before pruning.
        params_after: Parameter count after pruning.
        macs_before: MACs per sample on the example input before pruning.
        macs_after: MACs per sample after pruning.
        groups_pruned: Dependency groups actually shrunk, summed over steps.
        widths_before: Output width of every Conv/Linear/LSTM layer before pruning.
        widths_after: The same widths after pruning.
        heads_after: ``num_heads``/``head_dim`` of each attention module after pruning.
    """

    ratio: float
    steps: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups_pruned: int
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    heads_after: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def param_reduction_pct(self) -> float:
        """Percentage of parameters removed."""
        return 100.0 * (1.0 - self.params_after / self.params_before) if self.params_before else 0.0

    @property
    def macs_reduction_pct(self) -> float:
        """Percentage of MACs removed."""
        return 100.0 * (1.0 - self.macs_after / self.macs_before) if self.macs_before else 0.0

    def to_dict(self) -> dict:
        """Plain dict of all fields plus the two reduction percentages."""
        d = asdict(self)
        d["param_reduction_pct"] = self.param_reduction_pct
        d["macs_reduction_pct"] = self.macs_reduction_pct
        return d


def _attention_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Attention modules in timm's layout: a fused ``qkv`` Linear + ``num_heads``/``head_dim``."""
    return {
        name: m
        for name, m in net.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
        and isinstance(getattr(m, "head_dim", None), int)
    }


def dependency_graph(net: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``net``, traced with our LSTM handler."""
    return tp.DependencyGraph().build_dependency(
        net,
        example_input,
        forward_fn=_traceable_forward,
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


def prune_l1(
    net: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    steps: int = 1,
    finetune: Callable[[nn.Module], None] | None = None,
    round_to: int | None = None,
    ignored_layers: Sequence[nn.Module] = (),
) -> tuple[nn.Module, PruneReport]:
    """Prune ``ratio`` of every prunable group of ``net`` in place, ranked by group L1 norm.

    Channels of convs, Linear hidden units, LSTM hidden units, attention head dims and
    the transformer residual width all shrink by ``ratio`` (per group, uniformly). The
    input channels of the first layer and the output channels of the output layer(s)
    are kept, so input and output shapes do not change.

    Args:
        net: Model to prune; modified in place (its train/eval mode is restored).
        example_input: A batch the model accepts, used for tracing and MAC counting.
        ratio: Fraction of channels to remove, ``0 <= ratio < 1``; ``0`` is a no-op.
        steps: Iterative pruning steps; step ``i`` reaches ``ratio * i / steps``.
        finetune: Called as ``finetune(net)`` after every step (e.g. a few epochs of
            training). Parameters are replaced by pruning, so build optimizers inside it.
        round_to: Keep channel counts multiples of this (e.g. 4/8 for SIMD kernels).
        ignored_layers: Extra modules whose output channels must not be pruned.

    Returns:
        The same ``net`` object and a :class:`PruneReport`.

    Raises:
        ValueError: If ``ratio`` or ``steps`` is out of range.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must satisfy 0 <= ratio < 1, got {ratio}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps}")
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    steps = int(steps)

    was_training = net.training
    net.eval()  # dropout off: tracing and MAC counting must be deterministic
    params_before = count_params(net)
    macs_before = count_macs(net, example_input)
    widths_before = layer_widths(net)

    attention = _attention_modules(net)
    # a trace of our own to find the output layers (BasePruner then builds its own graph)
    graph = dependency_graph(net, example_input)
    ignored = [*output_layers(graph), *ignored_layers]
    # uni-directional LSTMs only: LSTMPruner cannot split a bidirectional output
    ignored += [
        m for m in net.modules()
        if isinstance(m, nn.LSTM) and (m.bidirectional or m.proj_size > 0)
    ]

    pruner = tp.pruner.BasePruner(
        net,
        example_input,
        importance=L1Importance(),
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=ignored,
        round_to=round_to,
        num_heads={m.qkv: m.num_heads for m in attention.values()},
        prune_head_dims=True,  # keep every head, shrink each head's dims
        prune_num_heads=False,
        customized_pruners={nn.LSTM: LSTMPruner()},
        forward_fn=_traceable_forward,
        # fresh dicts: tp's defaults are shared mutable dicts that it writes into
        in_channel_groups={},
        out_channel_groups={},
    )

    groups_pruned = 0
    for _ in range(steps):
        for group in pruner.step(interactive=True):
            group.prune()
            groups_pruned += 1
        for m in attention.values():  # forward reads these: sync them with the pruned qkv
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if finetune is not None:
            finetune(net)
            net.eval()

    report = PruneReport(
        ratio=float(ratio),
        steps=steps,
        params_before=params_before,
        params_after=count_params(net),
        macs_before=macs_before,
        macs_after=count_macs(net, example_input),
        groups_pruned=groups_pruned,
        widths_before=widths_before,
        widths_after=layer_widths(net),
        heads_after={name: (m.num_heads, m.head_dim) for name, m in attention.items()},
    )
    net.train(was_training)
    return net, report


# --------------------------------------------------------------------------- persistence


def save_pruned(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save the whole pruned module (architecture + weights) atomically.

    A pruned ``state_dict`` does not fit the original class's constructor, so the full
    module is pickled. Written to a temp file in the same directory, then ``os.replace``d,
    so readers never see a half-written file.

    Args:
        net: The (pruned) model.
        path: Destination file, e.g. ``pruned.pt``.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(net, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a module saved by :func:`save_pruned`.

    Unpickles arbitrary code: only load files you produced yourself.

    Args:
        path: File written by :func:`save_pruned`.
        map_location: Device to load the tensors on.

    Returns:
        The pruned model.
    """
    net = torch.load(path, map_location=map_location, weights_only=False)
    for m in net.modules():
        if isinstance(m, nn.LSTM):
            m.flatten_parameters()
    return net
