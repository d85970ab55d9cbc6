"""Training a token prior and measuring its negative log-likelihood in bits per token.

Token grids come from ``arcvq-tokens export`` (``.npy`` (N, h, w) + sidecar with the codebook
size). The whole set sits on the device as one int64 tensor; each epoch visits it in the order
``torch.randperm(N)`` drawn from a generator seeded ``seed + epoch``. Loss: the mean cross-entropy
of every token given the ones before it; ``nll_bits_per_token`` is that mean in bits
(nats / ln 2) over a whole set, the prior's test NLL.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from arcvq_plugin.validation import check_int, check_optional_int, check_real

__all__ = ["nll_bits_per_token", "train_prior"]


def _check_tokens(tokens: torch.Tensor, codebook_size: int, name: str) -> None:
    if tokens.ndim != 3 or tokens.dtype != torch.long:
        raise ValueError(f"{name} must be an int64 tensor (N, h, w), got {tokens.dtype} {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(f"{name} must hold indices in [0, {codebook_size}), got [{int(tokens.min())}, {int(tokens.max())}]")


@torch.no_grad()
def nll_bits_per_token(model: nn.Module, tokens: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean ``-log2 p(token | earlier tokens)`` over every token of ``tokens`` (N, h, w), in eval mode."""
    if tokens.shape[0] < 1:
        raise ValueError("tokens must hold at least one grid")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        total += F.cross_entropy(model(batch), batch, reduction="sum").double()
    model.train(was_training)
    return float(total) / tokens.numel() / math.log(2.0)


def train_prior(model: nn.Module, train_tokens: torch.Tensor, test_tokens: Optional[torch.Tensor] = None, *,
                epochs: int = 1, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                max_steps: Optional[int] = None, log: Callable[[str], None] = print,
                progress: bool = True) -> list[dict]:
    """Train ``model`` (token grids -> logits (B, K, h, w)) with Adam on ``train_tokens`` (N, h, w) int64.

    Both token sets must be on the model's device. Returns one record per epoch:
    ``{"epoch", "steps", "train_nll_bits" (mean over the epoch's batches), "test_nll_bits" (None
    without test tokens), "seconds"}``. ``max_steps`` stops early (the last record covers the
    partial epoch).
    """
    codebook_size = model.codebook_size
    _check_tokens(train_tokens, codebook_size, "train_tokens")
    if test_tokens is not None:
        _check_tokens(test_tokens, codebook_size, "test_tokens")
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_real("lr", lr, minimum=0.0, exclusive=True)
    check_optional_int("max_steps", max_steps, minimum=1)
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = train_tokens.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    history, step = [], 0
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator).to(train_tokens.device)
        epoch_sum = torch.zeros((), dtype=torch.float64, device=train_tokens.device)
        batches = 0
        bar = tqdm(range(0, n, batch_size), total=steps_per_epoch, desc=f"prior epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for offset in bar:
            batch = train_tokens[order[offset:offset + batch_size]]
            loss = F.cross_entropy(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_sum += loss.detach().double()
            batches += 1
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        bar.close()
        record = {"epoch": epoch + 1, "steps": step, "train_nll_bits": float(epoch_sum) / batches / math.log(2.0),
                  "test_nll_bits": None if test_tokens is None else nll_bits_per_token(model, test_tokens),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        log(f"prior epoch {record['epoch']}: train NLL {record['train_nll_bits']:.4f} bits/token"
            + ("" if record["test_nll_bits"] is None else f", test NLL {record['test_nll_bits']:.4f} bits/token")
            + f" ({record['seconds']:.0f} s, {step} steps)")
        if max_steps is not None and step >= max_steps:
            break
    return history
