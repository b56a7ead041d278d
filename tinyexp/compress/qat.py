"""Quantization-aware training (QAT) with Brevitas, and QCDQ ONNX export of the result.

:func:`to_qat` swaps every Conv/ConvTranspose/Linear/LSTM of a (possibly pruned) float
network for its Brevitas counterpart: signed, narrow-range integer weights with one float
scale per output channel, a per-tensor quantizer on the layer's input activations, and an
int32 bias at the scale of the accumulator (input scale x weight scale).
Each new layer is built from the old *instance* (its actual, possibly pruned, widths) and
takes over its float weights, so QAT starts from the float model's accuracy. Everything
between these layers (ReLU, norms, attention matmuls, softmax, residual adds, embeddings)
stays float, exactly as the model's ``forward`` writes it.

Activation scales start from statistics: in training mode the first 300 forward passes
collect them (like BatchNorm running stats), after which they become learned parameters.
Call :func:`calibrate` right after :func:`to_qat` to initialise them from data before any
training or evaluation, or an un-calibrated model clips its activations to ``[-1, 1]``.

LSTMs: Brevitas' QCDQ export supports weight-only quantized LSTMs (exported as the standard
ONNX ``LSTM`` op fed by dequantized integer weights), not quantized gates or cell state.
So an LSTM becomes a weight-quantized ``QuantLSTM`` (float gates and cell state) behind an
input activation quantizer; both train and export. LSTMs this cannot represent (projections,
or dropout between the layers of one multi-layer ``nn.LSTM``) stay float and are listed by
:func:`qat_unsupported`.

:func:`export_qcdq` writes the QCDQ graph (QuantizeLinear -> Clip -> DequantizeLinear around
float ops) with TorchScript's exporter, although Brevitas defaults to the dynamo exporter on
torch >= 2.9: under dynamo the LSTM node is silently missing (Brevitas emits it from a
TorchScript symbolic), quantized biases are rejected, and weights are stored as float.

Brevitas modules cannot be pickled (``torch.save(qnet)`` fails): save ``qnet.state_dict()``
and restore it into ``to_qat(net, ...)`` built from the same float/pruned ``net``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

# brevitas warns at import about optional CUDA kernels it does not need on CPU
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import brevitas.export.onnx.handler as _onnx_handler
    import brevitas.nn as qnn
    from brevitas.export import export_onnx_qcdq
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import layerwise_quantize
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
    from brevitas.nn.quant_rnn import GateWeight
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Int32Bias

from tinyexp.files import atomic_write

__all__ = [
    "QuantInputLSTM",
    "calibrate",
    "export_qcdq",
    "qat_unsupported",
    "qat_weight_bits",
    "to_qat",
    "validation_loss",
]

MIN_BITS, MAX_BITS = 2, 8

# float layer -> Brevitas layer; matched by exact class, like Brevitas' own layer maps
_LAYER_MAP: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: qnn.QuantConv1d,
    nn.Conv2d: qnn.QuantConv2d,
    nn.Conv3d: qnn.QuantConv3d,
    nn.ConvTranspose1d: qnn.QuantConvTranspose1d,
    nn.ConvTranspose2d: qnn.QuantConvTranspose2d,
    nn.Linear: qnn.QuantLinear,
}


def _check_bits(name: str, bits: int) -> int:
    if isinstance(bits, bool) or int(bits) != bits or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def _weight_quant(bits: int):
    # signed, narrow range ([-(2^(b-1)-1), 2^(b-1)-1]), one max-abs scale per output channel,
    # recomputed from the current weights at every step, so it follows training
    return Int8WeightPerChannelFloat.let(bit_width=bits)


def _act_quant(bits: int):
    # signed per-tensor: inputs of our layers can be negative (raw series, residual stream)
    return Int8ActPerTensorFloat.let(bit_width=bits)


class QuantInputLSTM(nn.Module):
    """Weight-quantized Brevitas ``QuantLSTM`` behind an input activation quantizer.

    Called like the ``nn.LSTM`` it replaces: ``out, (h, c) = m(x, (h0, c0))``, with
    ``batch_first`` as that LSTM had it. Gates and cell state run in float: Brevitas cannot
    export quantized LSTM internals to QCDQ ONNX.

    Args:
        lstm: The ``QuantLSTM``, built sequence-first (ONNX Runtime only runs the ONNX
            ``LSTM`` op in its sequence-first layout, so a batch-first LSTM is wrapped in
            transposes instead).
        act_bits: Input-activation bit-width.
        batch_first: Whether inputs and outputs are ``(batch, time, features)``.
    """

    def __init__(self, lstm: qnn.QuantLSTM, act_bits: int, batch_first: bool) -> None:
        super().__init__()
        if lstm.layers[0][0].cell.batch_first:
            raise ValueError("QuantInputLSTM needs a sequence-first QuantLSTM")
        self.input_quant = qnn.QuantIdentity(
            act_quant=_act_quant(act_bits), return_quant_tensor=False
        )
        self.lstm = lstm
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        h0, c0 = hx if hx is not None else (None, None)
        x = self.input_quant(x)
        if self.batch_first:
            x = x.transpose(0, 1)
        out, state = self.lstm(x, h0, c0)
        return (out.transpose(0, 1) if self.batch_first else out), state


def _lstm_unsupported(lstm: nn.LSTM) -> bool:
    # QuantLSTM has no projection and no dropout between its stacked layers
    return lstm.proj_size > 0 or (lstm.num_layers > 1 and lstm.dropout > 0)


def qat_unsupported(net: nn.Module) -> list[str]:
    """Names of the layers :func:`to_qat` leaves in float (LSTMs it cannot represent).

    Everything else of a supported type is quantized; layers of other types (norms,
    embeddings, activations) are float by design and not listed.
    """
    return [
        name for name, m in net.named_modules()
        if isinstance(m, nn.LSTM) and _lstm_unsupported(m)
    ]


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def to_qat(net: nn.Module, weight_bits: int, act_bits: int) -> nn.Module:
    """A quantization-aware copy of ``net``; ``net`` itself is not modified.

    Every ``Conv1d/2d/3d``, ``ConvTranspose1d/2d`` and ``Linear`` becomes its Brevitas
    ``Quant*`` twin with ``weight_bits``-bit weights (signed, narrow range, per-channel
    scale), an ``act_bits``-bit per-tensor input quantizer and an int32 bias. Every
    ``nn.LSTM`` becomes a :class:`QuantInputLSTM` (``weight_bits``-bit gate weights,
    ``act_bits``-bit input), except those listed by :func:`qat_unsupported`. Layers are
    rebuilt from the instances, so pruned widths carry over, and get the float weights.

    Args:
        net: Float model, pruned or not.
        weight_bits: Weight bit-width, 2..8.
        act_bits: Input-activation bit-width, 2..8.

    Returns:
        The new model, in the same train/eval mode as ``net``. Initialise its activation
        scales with :func:`calibrate` before evaluating it.

    Raises:
        ValueError: If a bit-width is out of range.
    """
    weight_bits = _check_bits("weight_bits", weight_bits)
    act_bits = _check_bits("act_bits", act_bits)
    qnet = copy.deepcopy(net)  # Brevitas swaps modules in place and reuses the weight tensors
    layer_kwargs = {
        "input_quant": _act_quant(act_bits),
        "weight_quant": _weight_quant(weight_bits),
        # int32 bias at scale input_scale * weight_scale, as integer kernels add it to the
        # accumulator; ONNX Runtime quantizes a float bias that way by itself, so a float bias
        # here would make the exported model drift from the trained one
        "bias_quant": Int32Bias,
        "return_quant_tensor": False,
    }
    lstm_kwargs = {
        "weight_quant": _weight_quant(weight_bits),
        "bias_quant": None,
        # QCDQ export only handles LSTMs whose gates and cell state are all float
        "io_quant": None,
        "gate_acc_quant": None,
        "sigmoid_quant": None,
        "tanh_quant": None,
        "cell_state_quant": None,
        "return_quant_tensor": False,
        "batch_first": False,  # see QuantInputLSTM
    }
    layer_map = {cls: (qcls, layer_kwargs) for cls, qcls in _LAYER_MAP.items()}
    layer_map[nn.LSTM] = (qnn.QuantLSTM, lstm_kwargs)
    float_lstms = qat_unsupported(qnet)
    lstm_batch_first = {
        name: m.batch_first for name, m in qnet.named_modules()
        if type(m) is nn.LSTM and name not in float_lstms
    }
    # layerwise_quantize only replaces children, so hold the net in a container: a bare
    # layer (to_qat(nn.Linear(...))) gets replaced too, and every name gains a "0" prefix
    holder = nn.Sequential(qnet)

    def held(name: str) -> str:
        return f"0.{name}" if name else "0"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layerwise_quantize(
            holder, compute_layer_map=layer_map,
            name_blacklist=[held(n) for n in float_lstms] or None,
        )
        for name, batch_first in lstm_batch_first.items():
            parent, child = _parent(holder, held(name))
            setattr(parent, child, QuantInputLSTM(getattr(parent, child), act_bits, batch_first))
    holder.train(qnet.training)  # layerwise_quantize restores the holder's mode, not the net's
    return holder[0]


@torch.no_grad()
def calibrate(qnet: nn.Module, batches: torch.Tensor | Iterable[Any]) -> nn.Module:
    """Initialise the activation scales of ``qnet`` from float statistics of ``batches``.

    Runs all the inputs as one batch, quantization off, while each activation quantizer
    records the 99.999th percentile of ``|x|`` at its input (over all the inputs: Brevitas
    would average per-batch percentiles, and an average of small batches clips the rare
    large activations), then freezes those ranges as the initial learned scales. The ranges
    bound what the deployed model can represent: calibrate on every input it must handle
    well, the data an anomaly threshold is set on included.

    Args:
        qnet: A model from :func:`to_qat`; modified in place.
        batches: One input batch, or an iterable of input batches (tensors, or tuples
            whose first element is the input, as data loaders yield them).

    Returns:
        ``qnet``, in the train/eval mode it had.
    """
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    x = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in batches])
    training = qnet.training
    qnet.eval()  # dropout off; calibration_mode switches the quantizers to stats collection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with calibration_mode(qnet):
            qnet(x)
    qnet.train(training)
    return qnet


@torch.no_grad()
def validation_loss(net: nn.Module, datamodule: Any) -> float:
    """The task loss of ``net`` on the validation data, as training's ``val/loss`` has it.

    Reconstruction MSE for anomaly data (batches are inputs), cross-entropy for
    classification (batches are ``(input, label)``), averaged over samples, in eval mode.
    """
    training = net.training
    net.eval()
    total, count = 0.0, 0
    for batch in datamodule.val_dataloader():
        if datamodule.task == "anomaly":
            loss = nn.functional.mse_loss(net(batch), batch)
            n = len(batch)
        else:
            x, y = batch
            loss, n = nn.functional.cross_entropy(net(x), y), len(y)
        total, count = total + float(loss) * n, count + n
    net.train(training)
    return total / max(count, 1)


class _LSTMCellFn(torch.autograd.Function):
    """Brevitas' ``LSTMCellFn`` (one ONNX ``LSTM`` node) made right for every layout and batch.

    Brevitas 0.13.4 squeezes the direction axis of ``Y`` at the wrong position (1 for
    ``layout=1``, 2 for ``layout=0``; correct only for batch 1, seq-first) and its tracing
    placeholder has ``batch`` (or 1) features instead of ``hidden_size``, so any layer after
    a batch-first LSTM fails to trace.
    """

    @staticmethod
    def symbolic(g, inp, weight_i, weight_h, bias, sequence_lens, hidden_state, cell_state,
                 direction, hidden_size, cifg, layout, output_dir_axes, state_dir_axes):
        outputs, hidden, cell = g.op(
            "LSTM", inp, weight_i, weight_h, bias, sequence_lens, hidden_state, cell_state,
            direction_s=direction, hidden_size_i=hidden_size, input_forget_i=int(cifg),
            layout_i=int(layout), outputs=3,
        )
        # Y is [T, dirs, B, H] (layout 0) or [B, T, dirs, H] (layout 1);
        # Y_h and Y_c are [dirs, B, H] or [B, dirs, H]
        y_axis = g.op("Constant", value_t=torch.tensor([2 if layout else 1], dtype=torch.int64))
        s_axis = g.op("Constant", value_t=torch.tensor([1 if layout else 0], dtype=torch.int64))
        return (g.op("Squeeze", outputs, y_axis), g.op("Squeeze", hidden, s_axis),
                g.op("Squeeze", cell, s_axis))

    @staticmethod
    def forward(ctx, inp, weight_i, weight_h, bias, sequence_lens, hidden_state, cell_state,
                direction, hidden_size, cifg, layout, output_dir_axes, state_dir_axes):
        # shape-only placeholder, traced but never used as values (the ONNX LSTM computes them)
        state_axis = 1 if layout else 0
        return (inp.new_zeros(inp.size(0), inp.size(1), hidden_size),
                hidden_state.squeeze(state_axis), cell_state.squeeze(state_axis))


@contextlib.contextmanager
def _fixed_lstm_export() -> Iterator[None]:
    """Let Brevitas' LSTM export handler emit :class:`_LSTMCellFn` while exporting."""
    original = _onnx_handler.LSTMCellFn
    _onnx_handler.LSTMCellFn = _LSTMCellFn
    try:
        yield
    finally:
        _onnx_handler.LSTMCellFn = original


def export_qcdq(qnet: nn.Module, example: torch.Tensor, path: Path, opset: int) -> Path:
    """Export a QAT model to QCDQ ONNX for batch-1 inference; the file appears whole or not at all.

    Weights are stored as int8 initializers (a ``Clip`` restricts them to ``weight_bits``;
    ONNX has no packed 4-bit type here, so w4 and w8 files are the same size), biases as
    int32, and activations pass through QuantizeLinear (-> Clip below 8 bits) ->
    DequantizeLinear. Shapes are static.
    Inputs and outputs are named ``input`` and ``output``. The model is exported in eval
    mode and its train/eval mode restored afterwards.

    Args:
        qnet: A model from :func:`to_qat`.
        example: An input batch; only its first sample is used.
        path: Destination ``.onnx`` file.
        opset: ONNX opset, >= 14 (LSTM export needs it).

    Returns:
        ``path``.
    """

    def write(tmp: Path) -> None:
        # no_grad, not inference_mode: Brevitas' export fails on inference tensors
        with torch.no_grad(), warnings.catch_warnings(), _fixed_lstm_export():
            warnings.simplefilter("ignore")
            export_onnx_qcdq(
                qnet, args=example[:1].detach(), export_path=str(tmp), dynamo=False,
                opset_version=opset, input_names=["input"], output_names=["output"],
                keep_initializers_as_inputs=False,
            )

    return atomic_write(path, write)


def _weight_quantizers(qnet: nn.Module) -> dict[str, list[tuple[torch.Tensor, nn.Module]]]:
    """Layer name -> [(float weight, its enabled weight quantizer)], per quantized layer."""
    found: dict[str, list[tuple[torch.Tensor, nn.Module]]] = {}
    for name, m in qnet.named_modules():
        if isinstance(m, QuantInputLSTM):
            pairs = [
                (g.weight, g.weight_quant) for g in m.lstm.modules()
                if isinstance(g, GateWeight) and g.weight_quant.is_quant_enabled
            ]
        elif isinstance(m, QuantWeightBiasInputOutputLayer) and m.weight_quant.is_quant_enabled:
            pairs = [(m.weight, m.weight_quant)]
        else:
            continue
        if pairs:
            found[name] = pairs
    return found


def qat_weight_bits(qnet: nn.Module) -> dict[str, int]:
    """Weight bit-width used by each quantized layer of ``qnet``, by layer name."""
    bits: dict[str, int] = {}
    for name, pairs in _weight_quantizers(qnet).items():
        widths = {int(q.bit_width().item()) for _, q in pairs}
        bits[name] = max(widths)  # one value per layer: all gates of an LSTM share it
    return bits
