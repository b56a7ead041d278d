"""Measuring a network or an artifact the same way at every stage.

Task metrics come from a predictor (numpy in, numpy out): the PyTorch network for float
stages, the ONNX file itself in ONNX Runtime for quantized ones. Cost comes from the ONNX file
(params from the network, MACs, size, latency, flash and RAM from the file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyexp.compress.quantize import weight_bytes
from tinyexp.measure.cost import artifact_cost, count_params, export_onnx, ort_session
from tinyexp.measure.metrics import anomaly_metrics, classification_metrics

Predict = Callable[[np.ndarray], np.ndarray]


def torch_predict(net: nn.Module) -> Predict:
    """Predict with the network in eval mode, without gradients."""
    net.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return predict


def ort_predict(path: Path) -> Predict:
    """Predict with the artifact itself in ONNX Runtime (batch 1: its shapes are static)."""
    session = ort_session(path)
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

    return predict


class Measurer:
    """Task metrics and cost of networks and artifacts on one run's data and settings.

    Args:
        datamodule: the run's data (``task``, test data, ``example_input()``).
        dataset: the dataset's config node (anomaly threshold: ``threshold_quantile``,
            ``threshold_scale``).
        settings: the ``measure`` config node (``opset``, ``latency_warmup``, ``latency_runs``,
            ``latency_lock``).
    """

    def __init__(self, datamodule: Any, dataset: Any, settings: Any) -> None:
        self.datamodule = datamodule
        self.dataset = dataset
        self.settings = settings

    def task_metrics(self, predict: Predict) -> dict[str, float]:
        """Task metrics of a predictor on the test data."""
        data = self.datamodule
        if data.task == "anomaly":
            return anomaly_metrics(predict, data.segments, data.window,
                                   quantile=self.dataset.threshold_quantile,
                                   threshold_scale=self.dataset.threshold_scale)
        return classification_metrics(predict, *data.test_arrays())

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        """Task metrics of a float network, computed in PyTorch."""
        return self.task_metrics(torch_predict(net))

    def _measure(self, predict: Predict, net: nn.Module, artifact: Path) -> dict[str, float]:
        return {
            **self.task_metrics(predict),
            "params": count_params(net),
            "weight_bytes": weight_bytes(artifact),
            **artifact_cost(artifact, self.datamodule.example_input().numpy(),
                            warmup=self.settings.latency_warmup,
                            runs=self.settings.latency_runs,
                            lock=self.settings.latency_lock),
        }

    def float_network(self, net: nn.Module, artifact: Path) -> dict[str, float]:
        """Export a float network to ONNX and measure it (task metrics computed in PyTorch)."""
        export_onnx(net, self.datamodule.example_input(), artifact, self.settings.opset)
        return self._measure(torch_predict(net), net, artifact)

    def artifact(self, net: nn.Module, artifact: Path) -> dict[str, float]:
        """Measure an ONNX file in ONNX Runtime; ``net`` gives the parameter count."""
        return self._measure(ort_predict(artifact), net, artifact)
