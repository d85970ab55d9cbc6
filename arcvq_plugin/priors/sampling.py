"""Ancestral sampling of token grids from an autoregressive prior, in raster order."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from arcvq_plugin.validation import check_int, check_real

__all__ = ["sample_grids"]


@torch.no_grad()
def sample_grids(model: nn.Module, n: int, grid: tuple[int, int], *, temperature: float = 1.0,
                 batch_size: int = 1000, generator: Optional[torch.Generator] = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw ``n`` grids (n, h, w) int64: position by position, each token from ``softmax(logits / temperature)``.

    One forward pass per position and batch (h * w passes), so the model must be causal: the
    logits at a position may depend only on earlier positions (GatedPixelCNN is).
    ``generator`` (a CPU generator) makes the draw reproducible.
    """
    check_int("n", n, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_real("temperature", temperature, minimum=0.0, exclusive=True)
    height, width = grid
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        tokens = torch.zeros(count, height, width, dtype=torch.long, device=device)
        for i in range(height):
            for j in range(width):
                probabilities = torch.softmax(model(tokens)[:, :, i, j].double() / temperature, dim=1)
                draw = torch.multinomial(probabilities.cpu(), 1, generator=generator).squeeze(1)
                tokens[:, i, j] = draw.to(device)
        out.append(tokens.cpu())
    model.train(was_training)
    return torch.cat(out)
