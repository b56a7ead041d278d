"""torch-pruning support for ``nn.LSTM``, used by :mod:`tinyexp.compress.prune`.

torch-pruning 1.6.1's built-in LSTM handler is broken (asserts on multi-layer LSTMs,
prunes the wrong axis of ``weight_ih``) and its tracer misreads the plain CPU LSTM
kernel. This module holds the replacements:

* :class:`LSTMPruner`: the pruning handler (hidden units and input features).
* ``_traceable_forward``: a ``forward_fn`` for tp's tracer that makes every LSTM one
  opaque graph node.
* ``_lstm_unit_l1`` / ``_lstm_input_l1``: per-unit / per-input L1 scores, used by
  :class:`~tinyexp.compress.prune.L1Importance`.
* ``_lstm_macs_hook``: a MAC-counter hook that honours ``batch_first``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch_pruning.pruner.function import BasePruningFunc
from torch_pruning.utils import op_counter

__all__ = ["LSTMPruner"]

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

    def prune_out_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.Module:
        if layer.bidirectional or layer.proj_size > 0:
            # a bidirectional output is [fwd H | bwd H]; prune_l1 keeps these unpruned
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


def _traceable_forward(net: nn.Module, example_input: torch.Tensor):
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
            del m.forward  # never leave the patch behind (it would be pickled by save_pruned)


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


def _lstm_macs_hook(lstm: nn.LSTM, inputs: tuple, output) -> None:
    # tp's stock hook reads (batch, seq) from input[0][0].shape, which is wrong for
    # batch_first inputs; take them from the right axes and reuse tp's per-step count.
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = x.data.shape[0]
    elif x.dim() == 2:
        steps = x.shape[0]
    else:
        steps = x.shape[0] * x.shape[1]  # batch * time, whichever is first
    per_step = 0
    for k in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
        per_step = op_counter.rnn_flops(per_step, lstm, w_ih, w_hh, w_ih.shape[1])
        if lstm.bias:
            per_step += 2 * getattr(lstm, f"bias_ih_l{k}").shape[0]  # bias_ih + bias_hh
    lstm.__flops__ += int(per_step * steps * (2 if lstm.bidirectional else 1))
