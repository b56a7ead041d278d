"""What torch-pruning 1.6.1 lacks for our models, patched or added from outside.

:mod:`tinyexp.compress.prune` runs the pruning procedure on torch-pruning (``tp``); every
workaround for a gap in ``tp`` lives here, so the procedure reads as plain ``tp`` usage and
the patches can be dropped one by one when ``tp`` fixes them:

* ``nn.LSTM`` pruning: tp's built-in handler asserts on multi-layer LSTMs and prunes the
  wrong axis of ``weight_ih``; :class:`LSTMPruner` replaces it.
* ``nn.LSTM`` tracing: tp misreads the plain CPU LSTM kernel (it decomposes into per-gate
  ops); :func:`traceable_forward` makes every LSTM one opaque graph node.
* ``nn.LSTM`` scoring: tp's magnitude importance skips LSTM weights and returns ``None`` for
  groups without Conv/Linear/norm weights, so tp silently leaves them unpruned (e.g. the
  hidden units between two stacked LSTMs); :class:`L1Importance` scores them.
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

__all__ = ["L1Importance", "LSTMPruner", "attention_modules", "sync_heads", "traceable_forward"]


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


def _lstm_unit_l1(lstm: nn.LSTM, p: int) -> torch.Tensor:
    """Per-hidden-unit ``sum |w|^p`` over every weight attached to that unit."""
    hidden = lstm.hidden_size
    score = torch.zeros(hidden)
    for k, sfx in _lstm_weight_names(lstm):
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
            w = getattr(lstm, name + sfx).detach().abs().pow(p).cpu()
            score += w.view(4, hidden, -1).sum(dim=(0, 2))  # rows: 4 gate rows per unit
            if name.startswith("weight_hh") or k > 0:
                score += w.sum(dim=0)  # columns: the unit's recurrent / next-layer fan-out
        if lstm.bias:
            for name in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
                b = getattr(lstm, name + sfx).detach().abs().pow(p).cpu()
                score += b.view(4, hidden).sum(dim=0)
    return score


def _lstm_input_l1(lstm: nn.LSTM, p: int) -> torch.Tensor:
    """Per-input-feature ``sum |w|^p`` over the first layer's input columns."""
    score = torch.zeros(lstm.input_size)
    for sfx in _directions(lstm):
        score += getattr(lstm, f"weight_ih_l0{sfx}").detach().abs().pow(p).sum(dim=0).cpu()
    return score


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
