"""Export a float PyTorch network to a TFLite flatbuffer for TensorFlow Lite Micro.

Four modes, the TFLite converter's classic options:

* ``dynamic``: int8 weights, float activations quantized on the fly (hybrid kernels). The full
  TFLite runtime runs it; TFLite Micro has no hybrid kernels and refuses it.
* ``int8``: full-integer, per-channel int8 weights, int8 activations and int8 input and output,
  calibrated on training inputs with PyTorch 2 export quantization (PT2E).
* ``fp16``: float16 weights dequantized to float32 at load. TFLite Micro cannot dequantize
  float16 and refuses it.
* ``int16x8``: int16 activations, int8 weights. litert-torch cannot produce it (its PT2E
  quantizer has no 16-bit activation config, litert-torch #627), so the float flatbuffer is
  quantized by ai-edge-quantizer, which litert-torch installs, with the same min/max calibration.

No mode falls back to another: when the result is not what the mode promises (an int8 model
with a float input, a "dynamic" model with nothing quantized) the export raises
:class:`DeployError` instead of writing the file. Operators that stay float inside an integer
model (a transposed convolution PT2E does not quantize, LayerNorm) are listed in
``float_ops``. The file is slimmed for the MCU (names, signatures, converter metadata;
see :mod:`tinyexp.deploy._tflite`) and written atomically.

Heavy packages (torch, litert-torch, ai-edge-quantizer) are imported inside the functions.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyexp.deploy import _tflite
from tinyexp.deploy._capture import capture_stderr, one_line
from tinyexp.deploy.rewrite import rewrite_for_tflite
from tinyexp.files import atomic_write

if TYPE_CHECKING:
    import torch
    from torch import nn

MODES = ("float32", "dynamic", "int8", "fp16", "int16x8")
STATIC_MODES = ("int8", "int16x8")  # calibrated, meant for TFLite Micro
INT8_QUANTIZERS = ("pt2e", "aeq")
_IO_DTYPE = {"float32": "float32", "int8": "int8", "int16x8": "int16"}


class DeployError(Exception):
    """A model that cannot be deployed as asked; ``str()`` is one line saying why."""

    def __init__(self, reason: str) -> None:
        super().__init__(one_line(reason, limit=400))


def export_tflite(net: nn.Module, example: torch.Tensor, calibration: np.ndarray | None,
                  mode: str, path: str | os.PathLike, *, arch: str | None = None,
                  strip: bool = True, rewrite: bool = True,
                  int8_quantizer: str = "pt2e") -> dict[str, Any]:
    """Convert ``net`` to a ``mode`` TFLite flatbuffer at ``path``.

    Args:
        net: float network; it is deep-copied (rewrites apply to the copy) and run in eval mode.
        example: one input with batch 1, e.g. ``(1, window, channels)`` for the series models.
        calibration: float32 training inputs ``(N, ...)`` without the batch-1 axis per sample
            (any N >= 1); needed by ``int8`` and ``int16x8``, ignored by the others.
        mode: one of :data:`MODES`.
        path: the ``.tflite`` to write.
        arch: a name for error messages ("arch lstm: ...").
        strip: slim the flatbuffer for the MCU (tensor names, signatures, metadata).
        rewrite: apply the output-identical layer rewrites (off only to see the raw failure).
        int8_quantizer: ``"pt2e"`` (default) or ``"aeq"``: ai-edge-quantizer on the float
            file, which also quantizes transposed convolutions PT2E leaves in float.

    Returns:
        ``flash_bytes`` (file size), ``weight_bytes`` (constant buffers), ``rewrites``,
        ``unstripped_bytes``, ``float_ops``, ``input_dtype``, ``output_dtype``, ``seconds``.

    Raises:
        DeployError: unknown mode, missing calibration, a conversion failure, a result that is
            not the mode asked for, or a recurrent layer TFLite Micro cannot load.
    """
    where = f"arch {arch}, mode {mode}" if arch else f"mode {mode}"
    if mode not in MODES:
        raise DeployError(f"mode {mode}: unknown, expected one of {', '.join(MODES)}")
    if int8_quantizer not in INT8_QUANTIZERS:
        raise DeployError(f"int8_quantizer {int8_quantizer}: expected one of {INT8_QUANTIZERS}")
    if mode in STATIC_MODES and (calibration is None or len(calibration) == 0):
        raise DeployError(f"mode {mode}: needs calibration inputs, got none")
    if tuple(example.shape[:1]) != (1,):
        raise DeployError(f"example must have batch size 1, got shape {tuple(example.shape)}")
    samples = None if calibration is None else np.asarray(calibration, dtype=np.float32)
    if samples is not None and samples.shape[1:] != tuple(example.shape[1:]):
        raise DeployError(f"calibration samples have shape {samples.shape[1:]}, "
                          f"the example {tuple(example.shape[1:])}")
    start = time.perf_counter()
    net, rewrites = rewrite_for_tflite(net) if rewrite else (copy.deepcopy(net), [])
    net.eval()
    _drop_dropout(net)

    failure = None
    with _quiet() as captured:
        try:
            data = _convert(net, example, samples, mode, int8_quantizer)
        except Exception as e:  # every converter failure becomes one line below
            failure = e
    if failure is not None:
        reason = captured.reason(fallback=f"{type(failure).__name__}: {failure}")
        raise DeployError(f"{where}: conversion failed: {reason}") from failure

    model = _tflite.load(data)
    recurrent = _recurrent(net)
    if recurrent and mode in (*STATIC_MODES, "float32"):  # the modes TFLM could run
        _refuse_unloadable_recurrent(data, model, recurrent, where)
    _check_mode(model, mode, where)
    unstripped = len(data)
    if strip:
        data = _tflite.strip(data)
        model = _tflite.load(data)
    atomic_write(path, data)
    sg = model.subgraphs[0]
    return {
        "flash_bytes": len(data),
        "weight_bytes": _tflite.weight_bytes(model),
        "rewrites": rewrites,
        "unstripped_bytes": unstripped,
        "float_ops": _tflite.float_ops(model),
        "input_dtype": _tflite.dtype_name(sg.tensors[sg.inputs[0]]),
        "output_dtype": _tflite.dtype_name(sg.tensors[sg.outputs[0]]),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _drop_dropout(net: nn.Module) -> None:
    """Replace every Dropout of the (copied, eval-mode) ``net`` by the identity it computes.

    PT2E keeps an eval-mode dropout in the exported graph; between a global average pool and
    a Linear (a classifier head's dropout) litert-torch then quantizes the Linear's input with
    the wrong scale: a DS-CNN's int8 logits came out 30% off (relative RMS) with it, 1% without.
    """
    from torch import nn

    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.dropout._DropoutNd):
                setattr(parent, name, nn.Identity())


def _convert(net: nn.Module, example: torch.Tensor, samples: np.ndarray | None, mode: str,
             int8_quantizer: str) -> bytes:
    if mode == "dynamic":
        return _pt2e(net, example, example.detach().numpy(), dynamic=True)
    if mode == "float32":
        import litert_torch

        return litert_torch.convert(net, (example,)).model_content()
    if mode == "int8" and int8_quantizer == "pt2e":
        return _pt2e(net, example, samples, dynamic=False)
    import litert_torch

    float_model = litert_torch.convert(net, (example,)).model_content()
    return _ai_edge_quantize(float_model, mode, samples)


def _pt2e(net: nn.Module, example: torch.Tensor, samples: np.ndarray,
          dynamic: bool) -> bytes:
    """PT2E: export, insert observers, run the calibration inputs, convert, then litert-torch."""
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _pt2e_quantizer(dynamic)
    with torch.no_grad():
        graph = torch.export.export(net, (example,)).module()
        graph = prepare_pt2e(graph, quantizer)
        # the exported graph has batch 1 baked in: one sample per call
        for sample in samples.reshape(-1, *example.shape[1:]):
            graph(torch.from_numpy(np.ascontiguousarray(sample[None])))
        graph = convert_pt2e(graph, fold_quantize=False)
    move_exported_model_to_eval(graph)
    for module in graph.modules():  # eval() is refused on exported graphs; the flag is all
        module.training = False  # litert-torch reads (it warns about "training mode" otherwise)
    config = QuantConfig(pt2e_quantizer=quantizer)
    return litert_torch.convert(graph, (example,), quant_config=config).model_content()


def _pt2e_quantizer(dynamic: bool) -> Any:
    """litert-torch's symmetric per-channel PT2E quantizer, annotating every addition too.

    Its own add annotator finds the additions by ``source_fn_stack``, which torch 2.13's export
    no longer records: it finds none, and an addition is quantized only where the ops around it
    happen to quantize both its inputs and its output. A chain of residual additions (one
    MobileNetV2 block's sum feeding the next block's) then ran as float ADDs between DEQUANTIZE
    and QUANTIZE inside an int8 model. Each addition of two tensors left unannotated gets int8
    inputs and output here, as that annotator would have given them.
    """
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class AddQuantizer(PT2EQuantizer):
        def _annotate_for_static_quantization_config(self, model: Any) -> Any:
            model = super()._annotate_for_static_quantization_config(model)
            config = self.global_config
            for node in model.graph.nodes:
                args = node.args[:2]
                done = getattr(node.meta.get("quantization_annotation"), "_annotated", False)
                if (node.target == torch.ops.aten.add.Tensor and not done
                        and all(isinstance(a, torch.fx.Node) for a in args)):
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={a: get_input_act_qspec(config) for a in args},
                        output_qspec=get_output_act_qspec(config), _annotated=True)
            return model

    return AddQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))


def _ai_edge_quantize(float_model: bytes, mode: str, samples: np.ndarray | None) -> bytes:
    """Quantize a float flatbuffer with ai-edge-quantizer (int16x8, fp16, int8 "aeq")."""
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import qsv_utils

    if mode == "fp16":
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        chosen = manager.get_quantization_recipe()
    else:
        chosen = recipe.static_wi8_ai16() if mode == "int16x8" else recipe.static_wi8_ai8()
    q = quantizer.Quantizer(float_model, chosen)
    result = None
    if q.need_calibration:
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(chosen)
        # Its default keeps a moving average of per-sample min/max, which clips the ranges
        # (10% error on a small classifier in int16x8); global min/max matches PT2E's observers.
        calib = calibrator.Calibrator(float_model, num_threads=1,
                                      qsv_update_func=qsv_utils.min_max_update)
        key, name = _signature_input(float_model)
        shape = _tflite.tensor_info(_input_tensor(float_model)).shape
        calib.calibrate({key: [{name: s.reshape(shape)} for s in samples]}, manager)
        result = calib.get_model_qsvs()
    return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


def _input_tensor(data: bytes) -> Any:
    sg = _tflite.load(data).subgraphs[0]
    return sg.tensors[sg.inputs[0]]


def _signature_input(data: bytes) -> tuple[str, str]:
    sig = _tflite.load(data).signatureDefs[0]
    decode = lambda s: s.decode() if isinstance(s, bytes) else s  # noqa: E731
    return decode(sig.signatureKey), decode(sig.inputs[0].name)


def _recurrent(net: nn.Module) -> list[tuple[str, str]]:
    from torch import nn

    kinds = (nn.LSTM, nn.GRU, nn.RNN)
    return [(name, type(m).__name__) for name, m in net.named_modules() if isinstance(m, kinds)]


def _refuse_unloadable_recurrent(data: bytes, model: Any, recurrent: list[tuple[str, str]],
                                 where: str) -> None:
    """Raise if TFLite Micro cannot load a converted recurrent network.

    litert-torch emits no LSTM kernel: it unrolls every time step into element-wise ops and
    joins the steps with one CONCATENATION, beyond TFLite Micro's input limit for windows
    longer than 10 steps. Whether it loads is asked of TFLite Micro itself.
    """
    from tinyexp.deploy.tflm import probe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recurrent.tflite"
        path.write_bytes(data)
        result = probe(path)
    if result["loads"]:
        return
    graph_ops = _tflite.ops(model)
    kinds = Counter(outs[0] for _, _, outs in graph_ops if outs)
    dtype = kinds.most_common(1)[0][0]
    name, kind = recurrent[0]
    raise DeployError(
        f"{where}: nn.{kind} ({name}) converts to {len(graph_ops)} unrolled {dtype} ops that "
        f"TFLite Micro cannot load ({result['error']})"
    )


def _check_mode(model: Any, mode: str, where: str) -> None:
    """Refuse a converted model that is not what ``mode`` promises."""
    sg = model.subgraphs[0]
    io = [_tflite.dtype_name(sg.tensors[i]) for i in (sg.inputs[0], sg.outputs[0])]
    if mode in _IO_DTYPE:
        want = _IO_DTYPE[mode]
        for role, got in zip(("input", "output"), io, strict=True):
            if got != want:
                kinds = sorted({f"{name}->{outs[0]}" for name, _, outs in _tflite.ops(model)
                                if outs})
                raise DeployError(
                    f"{where}: conversion left the model {role} {got}, not {want} "
                    f"(ops: {', '.join(kinds[:8])})"
                )
        return
    constant = {_tflite.dtype_name(t) for t in sg.tensors
                if t.buffer > 0 and model.buffers[t.buffer].data is not None}
    want = "int8" if mode == "dynamic" else "float16"
    if want not in constant:
        raise DeployError(f"{where}: conversion quantized no weights to {want}")


@contextmanager
def _quiet() -> Iterator[Any]:
    """Silence litert-torch's progress display, Python warnings and C++ logs; keep the text."""
    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # read at each task, so this is enough
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), capture_stderr() as captured:
            warnings.simplefilter("ignore")
            yield captured
    finally:
        root.setLevel(level)
        if saved_env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved_env
