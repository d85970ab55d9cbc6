"""A small gated PixelCNN (van den Oord et al., 2016) over grids of VQ token indices.

    tokens (B, h, w) int64 in [0, K) --embedding--> (B, C, h, w)
      --first gated layer (strictly causal)--> --(n_layers - 1) gated layers with residuals-->
      --ReLU, 1x1 conv, ReLU, 1x1 conv--> logits (B, K, h, w)

``logits[b, :, i, j]`` depends only on the tokens before (i, j) in raster order (rows above, and
the columns to the left in row i), so ``softmax(logits)`` factorises p(grid) autoregressively.
Each layer has the paper's two stacks, which together leave no blind spot:

- the vertical stack sees every row above (its kernel covers ``kernel_size // 2 + 1`` rows ending
  at the current one, and in the first layer its output is shifted down by one row);
- the horizontal stack sees the current row to the left (kernel ``1 x (kernel_size // 2 + 1)``
  ending at the current column, shifted right by one column in the first layer), plus the
  vertical stack through a 1x1 convolution;
- both are gated, ``tanh(a) * sigmoid(b)``; the horizontal stack has a residual connection
  (not in the first layer, whose input at (i, j) is the token being predicted).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arcvq_plugin.validation import check_int

__all__ = ["GatedLayer", "GatedPixelCNN"]


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _shift_right(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class GatedLayer(nn.Module):
    """One gated layer: ``(vertical, horizontal) (B, C, h, w) x 2 -> same``; ``first`` makes it strictly causal."""

    def __init__(self, channels: int, kernel_size: int, first: bool = False):
        super().__init__()
        self.half = kernel_size // 2
        self.first = first
        self.vertical = nn.Conv2d(channels, 2 * channels, kernel_size=(self.half + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, kernel_size=(1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.horizontal_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, vertical: torch.Tensor, horizontal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.half
        v_features = self.vertical(F.pad(vertical, (h, h, h, 0)))  # row i: rows i - h .. i
        h_features = self.horizontal(F.pad(horizontal, (h, 0, 0, 0)))  # column j: columns j - h .. j
        if self.first:  # strictly before the current position
            v_features, h_features = _shift_down(v_features), _shift_right(h_features)
        out = self.horizontal_out(_gate(h_features + self.vertical_to_horizontal(v_features)))
        return _gate(v_features), out if self.first else horizontal + out


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over (h, w) grids of indices of a K-code codebook.

    Args:
        codebook_size: K >= 2.
        hidden: channels of both stacks (32).
        n_layers: gated layers >= 1, the first strictly causal (6).
        kernel_size: odd >= 3 (3); the receptive field grows by ``kernel_size // 2`` per layer.
    """

    def __init__(self, codebook_size: int, hidden: int = 32, n_layers: int = 6, kernel_size: int = 3):
        super().__init__()
        for name, value, low in (("codebook_size", codebook_size, 2), ("hidden", hidden, 1), ("n_layers", n_layers, 1)):
            check_int(name, value, minimum=low)
        check_int("kernel_size", kernel_size, minimum=3, parity="odd")
        self.codebook_size, self.hidden, self.n_layers, self.kernel_size = codebook_size, hidden, n_layers, kernel_size
        self.embedding = nn.Embedding(codebook_size, hidden)
        self.layers = nn.ModuleList(GatedLayer(hidden, kernel_size, first=i == 0) for i in range(n_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, codebook_size, 1))

    def config(self) -> dict:
        """The constructor arguments (saved with a checkpoint)."""
        return {"codebook_size": self.codebook_size, "hidden": self.hidden, "n_layers": self.n_layers,
                "kernel_size": self.kernel_size}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w) int64 in [0, K) -> logits (B, K, h, w) of each position given the earlier ones."""
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be (B, h, w), got shape {tuple(tokens.shape)}")
        x = self.embedding(tokens).permute(0, 3, 1, 2).contiguous()
        vertical, horizontal = x, x
        for layer in self.layers:
            vertical, horizontal = layer(vertical, horizontal)
        return self.head(horizontal)
