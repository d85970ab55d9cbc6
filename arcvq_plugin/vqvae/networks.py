"""The small VQ-VAE network of van den Oord et al. as in the CVQ-VAE / ArcVQ-VAE reference code.

Encoder (image (B, C, H, W) -> features (B, hidden, H/4, W/4)):
    conv 4x4/2 -> hidden/2, ReLU, conv 4x4/2 -> hidden, ReLU, conv 3x3 -> hidden,
    residual stack (n_res_layers blocks ``relu(x) + conv1x1(relu(conv3x3(relu(x))))``, then a ReLU).
Decoder (latents (B, D, H/4, W/4) -> image (B, C, H, W), unbounded):
    conv 3x3 -> hidden, residual stack, transposed conv 4x4/2 -> hidden/2, ReLU,
    transposed conv 4x4/2 -> C.
The reference blocks are ``x + Sequential(ReLU(inplace=True), conv, ReLU, conv)(x)``: the in-place
ReLU rewrites ``x`` before the sum, so the skip carries ``relu(x)``. ``ResidualBlock`` computes that
same function without the in-place trick.
The 1x1 convolution from hidden to the code dimension D sits in ``VQVAE`` (``quant_conv``), as
``_pre_vq_conv`` does in the reference model. H and W must be multiples of 4.
"""
from __future__ import annotations

import torch
from torch import nn

from arcvq_plugin.validation import check_int

__all__ = ["Decoder", "Encoder", "ResidualBlock", "ResidualStack"]


def _check_channels(**channels: int) -> None:
    """ValueError naming the first of ``channels`` that is not an integer >= 1."""
    for name, value in channels.items():
        check_int(name, value, minimum=1)


class ResidualBlock(nn.Module):
    """``h + conv1x1(relu(conv3x3(h)))`` with ``h = relu(x)``; (B, channels, H, W) -> same shape."""

    def __init__(self, channels: int, res_hidden_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, res_hidden_channels, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(res_hidden_channels, channels, kernel_size=1, stride=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x)
        return h + self.block(h)


class ResidualStack(nn.Module):
    """``n_layers`` residual blocks followed by a ReLU; (B, channels, H, W) -> same shape."""

    def __init__(self, channels: int, n_layers: int, res_hidden_channels: int):
        super().__init__()
        check_int("n_res_layers", n_layers, minimum=0)
        self.layers = nn.Sequential(*[ResidualBlock(channels, res_hidden_channels) for _ in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layers(x))


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, hidden_channels, H/4, W/4). Defaults: the paper's MNIST/CIFAR net."""

    def __init__(self, in_channels: int = 1, hidden_channels: int = 128, n_res_layers: int = 2,
                 res_hidden_channels: int = 32):
        super().__init__()
        _check_channels(in_channels=in_channels, res_hidden_channels=res_hidden_channels)
        check_int("hidden_channels", hidden_channels, minimum=2, parity="even")
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels // 2, hidden_channels, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, stride=1, padding=1),
            ResidualStack(hidden_channels, n_res_layers, res_hidden_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, embed_dim, h, w) -> (B, out_channels, 4h, 4w), no output activation."""

    def __init__(self, embed_dim: int = 64, hidden_channels: int = 128, n_res_layers: int = 2,
                 res_hidden_channels: int = 32, out_channels: int = 1):
        super().__init__()
        _check_channels(embed_dim=embed_dim, res_hidden_channels=res_hidden_channels, out_channels=out_channels)
        check_int("hidden_channels", hidden_channels, minimum=2, parity="even")
        self.net = nn.Sequential(
            nn.Conv2d(embed_dim, hidden_channels, kernel_size=3, stride=1, padding=1),
            ResidualStack(hidden_channels, n_res_layers, res_hidden_channels),
            nn.ConvTranspose2d(hidden_channels, hidden_channels // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden_channels // 2, out_channels, kernel_size=4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
