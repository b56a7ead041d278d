"""The four architectures at their configured sizes, through export, TFLite Micro and C sources.

Slow (a few seconds per conversion): run with ``-m slow``. The fast tier covers the same
paths on small networks.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinyexp.deploy.export import DeployError

pytestmark = pytest.mark.slow

C, W = 8, 60  # SKAB-like series: 8 channels, windows of 60 steps


def build(arch: str):
    import torch

    from tinyexp.models.cnn import ConvAutoencoder
    from tinyexp.models.custom_cnn import CustomCNN
    from tinyexp.models.lstm import LSTMAutoencoder
    from tinyexp.models.transformer import TransformerAutoencoder

    with torch.random.fork_rng():
        torch.manual_seed(0)
        nets = {
            "cnn": lambda: (ConvAutoencoder(C, W), (W, C)),
            "custom_cnn": lambda: (CustomCNN(1, 10, 8), (1, 8, 8)),
            "lstm": lambda: (LSTMAutoencoder(C, W), (W, C)),
            "transformer": lambda: (TransformerAutoencoder(C, W), (W, C)),
        }
        net, shape = nets[arch]()
    calibration = np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32)
    return net.eval(), calibration


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
@pytest.mark.parametrize("arch", ["cnn", "custom_cnn"])
def test_convolutional_archs_run_in_tflm(arch, mode, tmp_path, deploy_extra, one_thread,
                                         rel_rmse):
    import torch

    from tinyexp.deploy.csource import write_sources
    from tinyexp.deploy.export import export_tflite
    from tinyexp.deploy.tflm import inspect, tflm_predict

    net, calibration = build(arch)
    path = tmp_path / f"{arch}.tflite"
    report = export_tflite(net, torch.from_numpy(calibration[:1]), calibration, mode, path,
                           arch=arch)
    assert len(report["rewrites"]) == (2 if arch == "cnn" else 0)
    ins = inspect(path)
    assert ins.loads, ins.error
    assert ins.arena_head > 0 and ins.arena_tail > 0
    with torch.no_grad():
        reference = net(torch.from_numpy(calibration[:8])).numpy()
    y = tflm_predict(path, ins.arena_bytes)(calibration[:8])
    assert rel_rmse(y, reference) < 0.05
    assert len(write_sources(path, tmp_path / "src", arena_bytes=ins.arena_bytes)) == 3


def test_aeq_int8_quantizes_the_transposed_convolutions(tmp_path, deploy_extra, one_thread):
    import torch

    from tinyexp.deploy.export import export_tflite
    from tinyexp.deploy.tflm import inspect

    net, calibration = build("cnn")
    path = tmp_path / "cnn.tflite"
    report = export_tflite(net, torch.from_numpy(calibration[:1]), calibration, "int8", path,
                           int8_quantizer="aeq")
    assert report["float_ops"] == []
    ins = inspect(path)
    assert ins.loads
    assert ("TRANSPOSE_CONV", ("int32", "int8", "int8", "int32"), ("int8",)) in ins.ops


def test_transformer_converts_but_tflm_has_no_gelu(tmp_path, deploy_extra, one_thread):
    import torch

    from tinyexp.deploy.csource import write_sources
    from tinyexp.deploy.export import export_tflite
    from tinyexp.deploy.tflm import host_latency_ms, inspect

    net, calibration = build("transformer")
    path = tmp_path / "transformer.tflite"
    export_tflite(net, torch.from_numpy(calibration[:1]), calibration, "int8", path)
    ins = inspect(path)
    assert not ins.loads and "GELU" in ins.error
    assert host_latency_ms(path, calibration[:1], 2, 5)["latency_ms"] > 0
    with pytest.raises(DeployError, match="operator GELU: TFLite Micro has no kernel"):
        write_sources(path, tmp_path / "src", arena_bytes=100_000)


def test_lstm_at_its_configured_size_is_refused(tmp_path, deploy_extra, one_thread):
    import torch

    from tinyexp.deploy.export import export_tflite

    net, calibration = build("lstm")
    with pytest.raises(DeployError, match=r"^arch lstm, mode int8: nn.LSTM \(encoder.layers.0\)"):
        export_tflite(net, torch.from_numpy(calibration[:1]), calibration[:8], "int8",
                      tmp_path / "lstm.tflite", arch="lstm")
