"""What torch-pruning 1.6.1 lacks for our models, patched or added from outside.

:mod:`tinyexp.compress.prune` runs the pruning procedure on torch-pruning (``tp``); every
workaround for a gap in ``tp`` lives here, so the procedure reads as plain ``tp`` usage and
the patches can be dropped one by one when ``tp`` fixes them:

* ``nn.LSTM`` pruning: tp's built-in handler asserts on multi-layer LSTMs and prunes the
  wrong axis of ``weight_ih``; :class:`LSTMPruner` replaces it.
* ``nn.LSTM`` tracing: tp misreads the plain CPU LSTM kernel (it decomposes into per-gate
  ops); :func:`traceable_forward` makes every LSTM one opaque graph node.
* ``nn.LSTM`` scoring: tp's importances (magnitude, Taylor, FPGM) skip LSTM weights and return
  ``None`` for groups without Conv/Linear/norm weights, so tp silently leaves them unpruned
  (e.g. the hidden units between two stacked LSTMs); :class:`MagnitudeImportance` (any ``p``;
  :class:`L1Importance` is ``p=1``), :class:`TaylorImportance` and :class:`FPGMImportance`
  score them.
* Channel counts: tp leaves a group whole, silently, when its count rounds to 0 channels kept
  (high ratios, ``round_to``, global ranking within one step);
  :class:`~tinyexp.compress.tp_pruner.WidthPruner` (its own module) counts every group.
* Attention: tp shrinks head dims only when told each ``qkv`` layer's head count, and never
  updates the module's own ``num_heads``/``head_dim``; :func:`attention_modules` finds
  modules in timm's layout and :func:`sync_heads` writes the new counts back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner.function import BasePruningFunc

__all__ = [
    "FPGMImportance",
    "L1Importance",
    "LSTMPruner",
    "MagnitudeImportance",
    "TaylorImportance",
    "attention_modules",
    "sync_heads",
    "traceable_forward",
]


# --------------------------------------------------------------------------- LSTM handler


def _directions(lstm: nn.LSTM) -> list[str]:
    """Parameter-name suffix of each direction: ``weight_ih_l0`` / ``weight_ih_l0_reverse``."""
    return ["", "_reverse"] if lstm.bidirectional else [""]


def _lstm_weight_names(lstm: nn.LSTM) -> list[tuple[int, str]]:
    """(layer index, direction suffix) for every layer/direction of an LSTM."""
    return [(k, sfx) for k in range(lstm.num_layers) for sfx in _directions(lstm)]


class LSTMPruner(BasePruningFunc):
    """torch-pruning handler for ``nn.LSTM`` (uni-directional, any ``num_layers``).

    Output channels are hidden units. Removing unit ``j`` removes, in *every* layer,
    row ``j`` of each of the four gate blocks (i, f, g, o) of ``weight_ih``/``weight_hh``
    and both biases, plus column ``j`` of ``weight_hh`` (the recurrence) and of the next
    layer's ``weight_ih`` — all layers of one ``nn.LSTM`` share ``hidden_size``.
    Input channels are the columns of the first layer's ``weight_ih``.
    """

    TARGET_MODULES = nn.LSTM

    @staticmethod
    def prunes_hidden_units(lstm: nn.LSTM) -> bool:
        """Whether this handler can remove hidden units of ``lstm``.

        A bidirectional output is ``[fwd H | bwd H]`` and a projected one has ``proj_size``
        features: neither maps one output channel to one hidden unit, so such LSTMs must be
        passed to tp as ignored layers.
        """
        return not lstm.bidirectional and lstm.proj_size == 0

    def prune_out_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.Module:
        if not self.prunes_hidden_units(layer):
            raise NotImplementedError(
                "LSTMPruner only prunes hidden units of uni-directional LSTMs without proj_size"
            )
        hidden = layer.hidden_size
        keep = sorted(set(range(hidden)) - {int(i) for i in idxs})
        # the 4 gates are stacked along dim 0 of weight_ih/weight_hh/biases: keep unit j in each
        gate_keep = [g * hidden + j for g in range(4) for j in keep]
        select = self._prune_parameter_and_grad  # (param, kept indices, dim) -> new Parameter
        for k, sfx in _lstm_weight_names(layer):
            w_ih = select(getattr(layer, f"weight_ih_l{k}{sfx}"), gate_keep, 0)
            if k > 0:  # layer k reads layer k-1's hidden units
                w_ih = select(w_ih, keep, 1)
            w_hh = select(getattr(layer, f"weight_hh_l{k}{sfx}"), gate_keep, 0)
            w_hh = select(w_hh, keep, 1)
            setattr(layer, f"weight_ih_l{k}{sfx}", w_ih)
            setattr(layer, f"weight_hh_l{k}{sfx}", w_hh)
            if layer.bias:
                for name in (f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"):
                    setattr(layer, name, select(getattr(layer, name), gate_keep, 0))
        layer.hidden_size = len(keep)
        _refresh_flat_weights(layer)
        return layer

    def prune_in_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.input_size)) - {int(i) for i in idxs})
        for sfx in _directions(layer):  # only the first layer reads the input
            name = f"weight_ih_l0{sfx}"
            setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, 1))
        layer.input_size = len(keep)
        _refresh_flat_weights(layer)
        return layer

    def get_out_channels(self, layer: nn.LSTM) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.LSTM) -> int:
        return layer.input_size


def _refresh_flat_weights(lstm: nn.LSTM) -> None:
    """Point the LSTM's cached flat weight list at the new Parameters (cuDNN needs it)."""
    lstm._init_flat_weights()
    lstm.flatten_parameters()


# --------------------------------------------------------------------------- LSTM tracing


class _OpaqueRNN(torch.autograd.Function):
    """Identity on an LSTM's outputs whose only graph input is the LSTM's input.

    tp builds its graph from autograd. With oneDNN/cuDNN an LSTM is a single autograd
    node, but the plain CPU kernel decomposes into per-gate splits and per-step ops that
    tp misreads (it then crashes with an IndexError). Tracing through this node makes
    the LSTM one opaque step ``input -> (output, h_n, c_n)`` on every backend.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, *outputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # ``weight`` (a leaf tp skips) makes the outputs require grad even when ``x``
        # does not, e.g. for the first layer reading the raw data
        return tuple(o.clone() for o in outputs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[None, ...]:
        return (None,) * (len(grads) + 2)  # tracing only: never differentiated


def traceable_forward(net: nn.Module, example_input: torch.Tensor):
    """``forward_fn`` for tp's tracer: run ``net`` with every LSTM made opaque."""
    lstms = [m for m in net.modules() if isinstance(m, nn.LSTM)]

    def opaque(lstm: nn.LSTM) -> Callable:
        original = lstm.forward  # bound class method, captured before shadowing it

        def forward(x, hx=None):
            if isinstance(x, nn.utils.rnn.PackedSequence):
                return original(x, hx)
            with torch.no_grad():
                out, (h, c) = original(x, hx)
            out, h, c = _OpaqueRNN.apply(x, lstm.weight_ih_l0, out, h, c)
            return out, (h, c)

        return forward

    for m in lstms:
        m.forward = opaque(m)  # instance attribute shadows nn.LSTM.forward; hooks still fire
    try:
        return net(example_input)
    finally:
        for m in lstms:
            del m.forward  # never leave the patch behind (a deepcopy or pickle would keep it)


# --------------------------------------------------------------------------- LSTM scoring

Values = Callable[[nn.Parameter], torch.Tensor]  # a parameter -> one score per weight


def _lstm_unit_sum(lstm: nn.LSTM, values: Values) -> torch.Tensor:
    """Per-hidden-unit sum of ``values(w)`` over every weight attached to that unit."""
    hidden = lstm.hidden_size
    score = torch.zeros(hidden)
    for k, sfx in _lstm_weight_names(lstm):
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
            w = values(getattr(lstm, name + sfx))
            score += w.view(4, hidden, -1).sum(dim=(0, 2))  # rows: 4 gate rows per unit
            if name.startswith("weight_hh") or k > 0:
                score += w.sum(dim=0)  # columns: the unit's recurrent / next-layer fan-out
        if lstm.bias:
            for name in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
                score += values(getattr(lstm, name + sfx)).view(4, hidden).sum(dim=0)
    return score


def _lstm_input_sum(lstm: nn.LSTM, values: Values) -> torch.Tensor:
    """Per-input-feature sum of ``values(w)`` over the first layer's input columns."""
    score = torch.zeros(lstm.input_size)
    for sfx in _directions(lstm):
        score += values(getattr(lstm, f"weight_ih_l0{sfx}")).sum(dim=0)
    return score


def _lstm_unit_vectors(lstm: nn.LSTM, values: Values) -> torch.Tensor:
    """One row per hidden unit: ``values(w)`` of every weight attached to it, side by side."""
    hidden = lstm.hidden_size
    parts = []
    for k, sfx in _lstm_weight_names(lstm):
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
            w = values(getattr(lstm, name + sfx))
            parts.append(w.view(4, hidden, -1).transpose(0, 1).reshape(hidden, -1))
            if name.startswith("weight_hh") or k > 0:
                parts.append(w.t())
        if lstm.bias:
            for name in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
                parts.append(values(getattr(lstm, name + sfx)).view(4, hidden).t())
    return torch.cat(parts, dim=1)


def _lstm_input_vectors(lstm: nn.LSTM, values: Values) -> torch.Tensor:
    """One row per input feature: its columns of the first layer's ``weight_ih``."""
    return torch.cat([values(getattr(lstm, f"weight_ih_l0{sfx}")).t()
                      for sfx in _directions(lstm)], dim=1)


class _LSTMScores:
    """Mixin for a tp group importance: LSTM hidden units and LSTM inputs are scored too.

    tp's importances only read Conv/Linear/norm weights and return ``None`` for groups without
    any, which makes the pruner skip them silently — e.g. the hidden units between two stacked
    LSTMs. Here every LSTM of a group adds a term (``_lstm_score``) that joins the others before
    tp's own reduction (mean over layers) and normalisation.
    """

    _lstm_terms: Sequence[tuple[torch.Tensor, list[int]]] = ()  # set during one __call__

    def _lstm_score(self, lstm: nn.LSTM, hidden: bool, idxs: list[int]) -> torch.Tensor:
        """Scores of hidden units (``hidden``) or input features ``idxs`` of ``lstm``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        self._lstm_terms = []
        for item in group:
            layer, fn = item.dep.layer, getattr(item.dep.pruning_fn, "__func__", None)
            if isinstance(layer, nn.LSTM) and fn in (LSTMPruner.prune_out_channels,
                                                     LSTMPruner.prune_in_channels):
                hidden = fn is LSTMPruner.prune_out_channels
                self._lstm_terms.append((self._lstm_score(layer, hidden, item.idxs),
                                         item.root_idxs))
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


class MagnitudeImportance(_LSTMScores, tp.importance.GroupMagnitudeImportance):
    """tp's group magnitude importance: ``sum |w|^p`` of each channel's weights, averaged over
    the group's layers (``p=2``: group L2 norm, squared), LSTMs included."""

    def __init__(self, p: int = 2) -> None:
        super().__init__(p=p)

    def _lstm_score(self, lstm: nn.LSTM, hidden: bool, idxs: list[int]) -> torch.Tensor:
        total = _lstm_unit_sum if hidden else _lstm_input_sum
        return total(lstm, lambda w: w.detach().abs().pow(self.p).cpu())[idxs]


class L1Importance(MagnitudeImportance):
    """Group L1 norm (``MagnitudeImportance(p=1)``, Li et al. 2017), LSTMs included."""

    def __init__(self) -> None:
        super().__init__(p=1)


class TaylorImportance(_LSTMScores, tp.importance.GroupTaylorImportance):
    """First-order Taylor importance (Molchanov et al. 2019): ``sum |w * dL/dw|`` of each
    channel's weights, averaged over the group's layers, LSTMs included.

    It reads the gradients the parameters hold: run a backward pass of the task loss (a few
    training batches) before each pruning step, e.g. through ``prune_structured``'s
    ``before_step``.
    """

    def __call__(self, group) -> torch.Tensor | None:
        for item in group:
            layer = item.dep.layer
            if isinstance(layer, (*self.target_types, nn.LSTM)) and any(
                    p.grad is None for p in layer.parameters(recurse=False)):
                raise RuntimeError(
                    f"TaylorImportance needs gradients, but {type(layer).__name__} has none: "
                    "run a backward pass of the loss before each pruning step (before_step)")
        return super().__call__(group)

    def _lstm_score(self, lstm: nn.LSTM, hidden: bool, idxs: list[int]) -> torch.Tensor:
        total = _lstm_unit_sum if hidden else _lstm_input_sum
        return total(lstm, lambda w: (w.detach() * w.grad).abs().cpu())[idxs]


class FPGMImportance(_LSTMScores, tp.importance.FPGMImportance):
    """Filter pruning via geometric median (He et al. 2019): a channel whose weights lie close
    to all the others' (near their geometric median) is redundant and goes first. A channel's
    score is its summed distance to the others (on ``|w|^p``, as tp computes it), LSTMs
    included."""

    def _lstm_score(self, lstm: nn.LSTM, hidden: bool, idxs: list[int]) -> torch.Tensor:
        rows = _lstm_unit_vectors if hidden else _lstm_input_vectors
        v = rows(lstm, lambda w: w.detach().abs().pow(self.p).cpu())[idxs]
        return torch.cdist(v[None], v[None], p=2)[0].abs().sum(dim=0)


# --------------------------------------------------------------------------- attention


def attention_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Attention modules in timm's layout: a fused ``qkv`` Linear + ``num_heads``/``head_dim``.

    Pass ``{m.qkv: m.num_heads}`` to tp's pruner so it shrinks every head alike, then call
    :func:`sync_heads` after each step.
    """
    return {
        name: m
        for name, m in net.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
        and isinstance(getattr(m, "head_dim", None), int)
    }


def sync_heads(attention: dict[str, nn.Module], pruner: tp.pruner.BasePruner) -> None:
    """Write the pruned head count and head size back into each attention module.

    ``forward`` reshapes the ``qkv`` output with these two attributes; tp only updates its
    own ``pruner.num_heads`` table.
    """
    for m in attention.values():
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
