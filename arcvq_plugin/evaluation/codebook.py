"""Codebook statistics of a quantiser: usage, perplexity and dead codes.

``usage`` is the fraction of the ``n_e`` codes selected at least once, ``perplexity`` is
``exp(H)`` with ``H = -sum_k p_k log p_k`` the entropy of the selection frequencies (0 log 0 = 0;
``H <= log n_e`` so the exponential cannot overflow), and ``dead_codes`` counts codes never
selected. The same numbers come from a vector of counts, e.g. an ``ArcQuantizer``'s
``code_counts`` buffer.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from arcvq_plugin.validation import check_int

__all__ = ["codebook_metrics", "codebook_metrics_from_counts"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def codebook_metrics_from_counts(counts: ArrayLike) -> dict:
    """Statistics of a codebook from per-code selection counts.

    Args:
        counts: (n_e,) non-negative counts (any numeric dtype), at least one positive.

    Returns:
        ``{"usage": float in [0, 1], "perplexity": float in [1, n_e], "dead_codes": int,
        "used_codes": int, "n_e": int, "n_tokens": float}``.
    """
    counts = torch.as_tensor(counts).detach().to("cpu", torch.float64).reshape(-1)
    if counts.numel() == 0:
        raise ValueError("counts must have at least one entry (one per code)")
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError("counts must be finite and >= 0")
    total = float(counts.sum())
    if total <= 0:
        raise ValueError("counts must contain at least one selection (sum > 0)")
    probs = counts / total
    nonzero = probs[probs > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    used = int((counts > 0).sum())
    n_e = int(counts.numel())
    return {
        "usage": used / n_e,
        "perplexity": math.exp(entropy),
        "dead_codes": n_e - used,
        "used_codes": used,
        "n_e": n_e,
        "n_tokens": total,
    }


def codebook_metrics(indices: ArrayLike, n_e: int) -> dict:
    """Statistics of the codes selected in ``indices``.

    Args:
        indices: integer code indices of any shape (e.g. taming's flat (B*H*W,) or (B, H, W)),
            each in ``[0, n_e)``; at least one index.
        n_e: codebook size (>= 1).

    Returns:
        see :func:`codebook_metrics_from_counts`.
    """
    n_e = check_int("n_e", n_e, minimum=1)
    flat = torch.as_tensor(indices).detach().to("cpu").reshape(-1)
    if flat.numel() == 0:
        raise ValueError("indices must hold at least one code index")
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {flat.dtype}")
    flat = flat.long()
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high >= n_e:
        raise ValueError(f"indices must lie in [0, n_e={n_e}), got range [{low}, {high}]")
    return codebook_metrics_from_counts(torch.bincount(flat, minlength=n_e))


def decoder_codebook(quantizer: torch.nn.Module) -> torch.Tensor:
    """(K, D) the codes the decoder receives, detached on the CPU: ``quantizer.codebook`` where the class
    defines one (SimVQ's projected codebook, FSQ's projected grid), else ``embedding.weight``."""
    codebook = quantizer.codebook if hasattr(type(quantizer), "codebook") else quantizer.embedding.weight
    return codebook.detach().cpu()
