"""LSTM autoencoder for multivariate time-series windows.

The encoder reads the window and keeps only its last hidden state, a fixed-size
summary of the whole window. The decoder receives that summary at every time step
and unrolls it back into a sequence, which a linear head maps to the input channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class StackedLSTM(nn.Module):
    """Single-layer ``nn.LSTM``s applied in sequence, with dropout between them.

    One module per layer (rather than ``nn.LSTM(num_layers=n)``) keeps every layer a
    separate node in torch-pruning's dependency graph, so each layer's hidden units
    can be pruned together with the input columns of whatever reads them.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.LSTM(input_size if i == 0 else hidden_size, hidden_size, batch_first=True)
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, lstm in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)  # same placement as nn.LSTM(dropout=...): between layers
            x, _ = lstm(x)
        return x


class LSTMAutoencoder(nn.Module):
    """Encoder LSTM -> last hidden state repeated over the window -> decoder LSTM -> Linear.

    Args:
        in_channels: Number of series (features) per time step, ``C``.
        window: Window length ``W`` the model is built for; the decoder runs for exactly
            ``W`` steps, so the exported graph has static shapes throughout.
        hidden_size: Hidden units of every LSTM layer.
        num_layers: Layers in the encoder and, separately, in the decoder.
        dropout: Dropout between stacked LSTM layers.

    Shapes: input ``(B, W, C)`` -> output ``(B, W, C)``.
    """

    def __init__(
        self,
        in_channels: int,
        window: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.in_channels = in_channels
        self.window = window
        self.encoder = StackedLSTM(in_channels, hidden_size, num_layers, dropout)
        self.decoder = StackedLSTM(hidden_size, hidden_size, num_layers, dropout)
        self.head = nn.Linear(hidden_size, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = self.encoder(x)[:, -1, :]  # (B, H): top layer's last hidden state
        # feed the summary at every step; repeat (not expand) gives the LSTM a dense input
        repeated = summary.unsqueeze(1).repeat(1, self.window, 1)
        return self.head(self.decoder(repeated))
