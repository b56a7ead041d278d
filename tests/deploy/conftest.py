"""Conversions shared by the deploy tests: each network is converted once per session.

A trained 8x8-digits classifier (CustomCNN at small width) and a small Conv1d autoencoder are
exported in the modes the tests look at; the files live in a session temp folder. The deploy
extra (litert-torch, tflite-micro) is needed: without it these fixtures skip.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

STUBS = Path(__file__).parent / "tflm_stubs"


@dataclass
class Exported:
    """A converted file with what it came from: net, report, held-out inputs, float outputs."""

    path: Path
    report: dict[str, Any]
    net: Any
    inputs: np.ndarray
    reference: np.ndarray
    labels: np.ndarray | None = None


@pytest.fixture(scope="session")
def deploy_extra() -> None:
    # find_spec, not importorskip: importing litert-torch here would print its C++ banner
    # outside the export's stderr capture
    for name in ("litert_torch", "tflite_micro", "ai_edge_quantizer"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"the deploy extra is not installed ({name} missing)")


@pytest.fixture(scope="session")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """(train x, train y, test x, test y) of scikit-learn's 8x8 digits, x (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return x[:1400], d.target[:1400], x[1400:], d.target[1400:]


@pytest.fixture(scope="session")
def classifier(digits, one_thread):
    """A small CustomCNN trained for a few seconds (about 90% test accuracy)."""
    import torch

    from tinyexp.models.custom_cnn import CustomCNN

    train_x, train_y, _, _ = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = CustomCNN(1, 10, 8, channels=(8, 16), hidden=32)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
        for _ in range(60):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def autoencoder(one_thread):
    """ConvAutoencoder(8 channels, window 32, widths (16, 8)): two padded ConvTranspose1d."""
    import torch

    from tinyexp.models.cnn import ConvAutoencoder

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ConvAutoencoder(in_channels=8, window=32, channels=(16, 8)).eval()


@pytest.fixture(scope="session")
def export(tmp_path_factory, deploy_extra):
    """``export(name, net, calibration, test_inputs, mode, **kw) -> Exported``, cached by name."""
    import torch

    from tinyexp.deploy.export import export_tflite

    folder = tmp_path_factory.mktemp("tflite")
    cache: dict[str, Exported] = {}

    def run(name: str, net, calibration: np.ndarray, inputs: np.ndarray, mode: str,
            **kwargs) -> Exported:
        if name not in cache:
            path = folder / f"{name}.tflite"
            example = torch.from_numpy(calibration[:1])
            report = export_tflite(net, example, calibration, mode, path, **kwargs)
            with torch.no_grad():
                reference = net(torch.from_numpy(inputs)).numpy()
            cache[name] = Exported(path, report, net, inputs, reference)
        return cache[name]

    return run


@pytest.fixture(scope="session")
def classifier_int8(export, classifier, digits) -> Exported:
    train_x, _, test_x, test_y = digits
    out = export("classifier_int8", classifier, train_x[:256], test_x, "int8", arch="custom_cnn")
    out.labels = test_y
    return out


@pytest.fixture(scope="session")
def series() -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) windows (N, 32, 8) of smooth random series."""
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.standard_normal((160, 32, 8)), axis=1) / 4
    return walk[:128].astype(np.float32), walk[128:].astype(np.float32)


@pytest.fixture(scope="session")
def autoencoder_int8(export, autoencoder, series) -> Exported:
    calibration, held_out = series
    return export("autoencoder_int8", autoencoder, calibration, held_out, "int8", arch="cnn")


@pytest.fixture(scope="session")
def rel_rmse():
    """``rel_rmse(y, reference)``: RMS error relative to the reference's standard deviation."""

    def measure(y: np.ndarray, reference: np.ndarray) -> float:
        return float(np.sqrt(np.mean((y - reference) ** 2)) / reference.std())

    return measure
