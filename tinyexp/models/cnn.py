"""1-D convolutional autoencoder for multivariate time-series windows.

Modelled on the Conv-AE baseline of the SKAB anomaly benchmark: a stack of stride-2
``Conv1d`` layers halves the time axis at every stage, a mirrored stack of stride-2
``ConvTranspose1d`` layers doubles it back, and a last ``Conv1d`` maps the features
back to the input channels. The reconstruction error per window is the anomaly score.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn as nn


class DownBlock(nn.Sequential):
    """Conv1d(stride 2) -> ReLU -> Dropout: halves the time axis."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dropout: float) -> None:
        # padding (k-1)//2 with an odd kernel maps an even length L to exactly L/2
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, stride=2, padding=(kernel_size - 1) // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
        )


class UpBlock(nn.Sequential):
    """ConvTranspose1d(stride 2) -> ReLU -> Dropout: doubles the time axis."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dropout: float) -> None:
        # with an odd kernel, output_padding=1 makes L -> exactly 2L (mirror of DownBlock)
        super().__init__(
            nn.ConvTranspose1d(
                in_ch, out_ch, kernel_size, stride=2,
                padding=(kernel_size - 1) // 2, output_padding=1,
            ),
            nn.ReLU(),
            nn.Dropout(dropout),
        )


class ConvAutoencoder(nn.Module):
    """Conv1d encoder / ConvTranspose1d decoder that reconstructs a window.

    Args:
        in_channels: Number of series (features) per time step, ``C``.
        window: Window length ``W``; must be divisible by ``2 ** len(channels)``.
        channels: Encoder widths, e.g. ``(32, 16)``; the decoder mirrors them.
        kernel_size: Odd kernel size shared by every convolution.
        dropout: Dropout after each hidden activation.

    Shapes: input ``(B, W, C)`` -> output ``(B, W, C)``.
    """

    def __init__(
        self,
        in_channels: int,
        window: int,
        channels: Sequence[int] = (32, 16),
        kernel_size: int = 7,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]  # Hydra hands over a ListConfig
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        factor = 2 ** len(channels)
        if window % factor != 0:
            raise ValueError(
                f"window={window} must be divisible by 2**len(channels)={factor} "
                f"so the decoder reconstructs exactly {window} steps"
            )
        self.in_channels = in_channels
        self.window = window

        widths = [in_channels, *channels]
        self.encoder = nn.Sequential(
            *(DownBlock(w_in, w_out, kernel_size, dropout) for w_in, w_out in pairwise(widths))
        )
        # mirror: 16 -> 16 -> 32 for channels=(32, 16), like SKAB's Conv-AE
        up = [channels[-1], *reversed(channels)]
        self.decoder = nn.Sequential(
            *(UpBlock(w_in, w_out, kernel_size, dropout) for w_in, w_out in pairwise(up))
        )
        self.head = nn.Conv1d(channels[0], in_channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)  # (B, W, C) -> (B, C, W): convs run over time
        h = self.decoder(self.encoder(h))
        return self.head(h).transpose(1, 2)
