"""Transformer autoencoder for multivariate time-series windows.

Each time step is projected to ``d_model`` features and tagged with a learned
position embedding; a stack of pre-norm encoder blocks lets every step attend to the
whole window; a final LayerNorm + Linear maps the features back to the input channels.

Attention is written out (not ``nn.MultiheadAttention``) in timm's ViT layout — one
fused ``qkv`` Linear, reshape to heads, ``proj`` Linear — with ``num_heads`` and
``head_dim`` as plain attributes read by ``forward``. torch-pruning understands this
layout (it can shrink head dims or drop heads), and the pruner only has to update
those two attributes afterwards.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm ViT layout)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        # fixed at construction: pruning head dims must not rescale the trained logits
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        att = (q @ k.transpose(-2, -1)) * self.scale
        att = self.attn_drop(att.softmax(dim=-1))
        # heads * head_dim, not d_model: the two differ once head dims are pruned
        y = (att @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(y))


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d_model -> ff_dim) -> GELU -> Linear(ff_dim -> d_model)."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ff_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ff_dim, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TransformerAutoencoder(nn.Module):
    """Linear embedding + learned positions -> encoder blocks -> LayerNorm -> Linear.

    Args:
        in_channels: Number of series (features) per time step, ``C``.
        window: Maximum window length ``W`` (size of the position table).
        d_model: Residual stream width.
        num_heads: Attention heads per block; must divide ``d_model``.
        num_layers: Number of encoder blocks.
        ff_dim: Hidden width of each feed-forward MLP.
        dropout: Dropout on attention weights, projections and embeddings.

    Shapes: input ``(B, W, C)`` -> output ``(B, W, C)``.
    """

    def __init__(
        self,
        in_channels: int,
        window: int,
        d_model: int = 32,
        num_heads: int = 4,
        num_layers: int = 2,
        ff_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.in_channels = in_channels
        self.window = window
        self.embed = nn.Linear(in_channels, d_model)
        self.pos = nn.Embedding(window, d_model)
        nn.init.normal_(self.pos.weight, std=0.02)  # small, like GPT-2: don't drown the signal
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, num_heads, ff_dim, dropout) for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.drop(self.embed(x) + self.pos(positions))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))
