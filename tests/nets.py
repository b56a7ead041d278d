"""The architectures the compression tests prune, at their default sizes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from tinyexp.models.cnn import ConvAutoencoder
from tinyexp.models.custom_cnn import CustomCNN
from tinyexp.models.lstm import LSTMAutoencoder
from tinyexp.models.transformer import TransformerAutoencoder

C = 8  # series channels

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


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHS[name][0]()


def sample(name: str, n: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *ARCHS[name][1], generator=torch.Generator().manual_seed(seed))
