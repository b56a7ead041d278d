"""The architectures the compression tests prune and quantize.

``ARCHS`` holds them at their default sizes; ``SMALL`` holds narrower ones for the QAT tests,
which convert, train and export every model many times.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from tinyexp.compress.prune import prune_structured
from tinyexp.compress.tp_patches import L1Importance
from tinyexp.measure.cost import count_params
from tinyexp.models.cnn import ConvAutoencoder
from tinyexp.models.custom_cnn import CustomCNN
from tinyexp.models.lstm import LSTMAutoencoder
from tinyexp.models.transformer import TransformerAutoencoder

C = 8  # series channels
W = 32  # window of the small series models

# name -> (factory with default sizes, one sample's shape)
ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "cnn-w60": (lambda: ConvAutoencoder(in_channels=C, window=60), (60, C)),
    "cnn-w32": (lambda: ConvAutoencoder(in_channels=C, window=32), (32, C)),
    "lstm-w60": (lambda: LSTMAutoencoder(in_channels=C, window=60), (60, C)),
    "lstm-w32": (lambda: LSTMAutoencoder(in_channels=C, window=32), (32, C)),
    "lstm-2layers": (lambda: LSTMAutoencoder(in_channels=C, window=60, num_layers=2), (60, C)),
    "transformer-w60": (lambda: TransformerAutoencoder(in_channels=C, window=60), (60, C)),
    "transformer-w32": (lambda: TransformerAutoencoder(in_channels=C, window=32), (32, C)),
    "custom_cnn": (lambda: CustomCNN(in_channels=1, num_classes=10, image_size=8), (1, 8, 8)),
}

# name -> (small model factory, one sample's shape)
SMALL: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "small-cnn": (lambda: ConvAutoencoder(in_channels=C, window=W, channels=(16, 8)), (W, C)),
    "small-lstm": (lambda: LSTMAutoencoder(in_channels=C, window=W, hidden_size=16), (W, C)),
    "small-transformer": (
        lambda: TransformerAutoencoder(
            in_channels=C, window=W, d_model=16, num_heads=2, num_layers=1, ff_dim=32
        ),
        (W, C),
    ),
    "small-custom_cnn": (
        lambda: CustomCNN(in_channels=1, num_classes=10, image_size=8, channels=(8, 16), hidden=32),
        (1, 8, 8),
    ),
}
_ALL = {**ARCHS, **SMALL}


def build(name: str, seed: int = 0, *, pruned: bool = False) -> nn.Module:
    """A fresh model (in train mode, as built); ``pruned`` halves its widths (L1)."""
    torch.manual_seed(seed)
    net = _ALL[name][0]()
    if pruned:
        before = count_params(net)
        prune_structured(net, sample(name, 2), ratio=0.5, importance=L1Importance())
        assert count_params(net) < 0.7 * before  # really pruned: later stages see odd widths
    return net


def sample(name: str, n: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *_ALL[name][1], generator=torch.Generator().manual_seed(seed))
