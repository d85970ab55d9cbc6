"""ArcCosine Additive Margin loss, ArcLoss (METHOD.md section 4).

Every code e_k is an anchor; its ``top_k`` most similar latents (largest cosine, over the whole
batch) are positives whose logit carries an additive angular margin, every other latent of the
batch is a negative::

    c_ki     = hat(sg[e_k]) . hat(z_i)
    logit_ki = s * cos(theta_ki + m)   for i in P_k,   s * c_ki otherwise
    L_arc    = -(1/K) sum_k log( sum_{i in P_k} exp(logit_ki) / sum_i exp(logit_ki) )

Computed as ``mean_k( logsumexp_i(logit_ki) - logsumexp_{i in P_k}(logit_ki) )``. The N latents
can be processed in chunks: the top-k scan keeps a running top-k per code, and each chunk's
``logsumexp`` is recomputed in backward (activation checkpointing), so peak memory is
O(K * chunk) while value and gradient equal the dense computation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .norm_bound import NORM_FLOOR

__all__ = ["ARCCOS_CLAMP", "arc_margin_loss", "arc_margin_loss_normalized", "margin_cosine",
           "normalize_rows", "scan_cosines", "validate_arc_options"]

ARCCOS_CLAMP = 1e-6
"""Cosines are clamped to [-1 + ARCCOS_CLAMP, 1 - ARCCOS_CLAMP] before arccos."""


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x / max(||x||, NORM_FLOOR)`` row-wise; x: (..., D)."""
    return F.normalize(x, dim=-1, eps=NORM_FLOOR)


def margin_cosine(cosine: torch.Tensor, m: float) -> torch.Tensor:
    """``cos(theta + m)`` with ``theta = arccos(clamp(cosine))``, elementwise.

    Where ``theta + m >= pi`` the angle would wrap around and the logit would grow again with
    theta; there the ArcFace convention is used instead: ``cos(theta) - m * sin(m)``, which keeps
    the margin logit decreasing in theta and below the plain one (a penalty, as intended).
    """
    c = cosine.clamp(-1.0 + ARCCOS_CLAMP, 1.0 - ARCCOS_CLAMP)
    theta = torch.acos(c)
    return torch.where(theta + m < math.pi, torch.cos(theta + m), c - m * math.sin(m))


def _chunks(n: int, chunk_size: Optional[int]) -> list[tuple[int, int]]:
    step = n if chunk_size is None else chunk_size
    return [(start, min(start + step, n)) for start in range(0, n, step)]


@torch.no_grad()
def scan_cosines(
    z_hat: torch.Tensor, e_hat: torch.Tensor, top_k: int, chunk_size: Optional[int] = None
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One pass over the cosine matrix for code selection and ArcLoss positives.

    Args:
        z_hat: (N, D) unit latents. e_hat: (K, D) unit codes.
        top_k: positives per code (0: skip). chunk_size: latents per chunk (None: all at once).
    Returns:
        nearest: (N,) int64, ``argmax_k z_hat_i . e_hat_k`` (the selected code of each latent).
        positives: (K, top_k) int64 indices of each code's most similar latents, or None.
    """
    n = z_hat.shape[0]
    nearest = torch.empty(n, dtype=torch.long, device=z_hat.device)
    best_val = best_idx = None
    for start, end in _chunks(n, chunk_size):
        cos = z_hat[start:end] @ e_hat.T  # (n_chunk, K)
        nearest[start:end] = cos.argmax(dim=1)
        if top_k:
            val, idx = cos.topk(min(top_k, end - start), dim=0)  # (k', K)
            idx = idx + start
            if best_val is not None:
                val, pick = torch.cat([best_val, val]).topk(min(top_k, end), dim=0)
                idx = torch.cat([best_idx, idx]).gather(0, pick)
            best_val, best_idx = val, idx
    positives = best_idx.T.contiguous() if top_k else None
    return nearest, positives


def _chunk_logsumexp(
    z_chunk: torch.Tensor, e_hat: torch.Tensor, local_pos: torch.Tensor,
    pos_logits: torch.Tensor, s: float,
) -> torch.Tensor:
    """(K,) logsumexp over one chunk of the logits, positives replaced by their margin logits."""
    n = z_chunk.shape[0]
    inside = (local_pos >= 0) & (local_pos < n)
    slot = torch.where(inside, local_pos, torch.full_like(local_pos, n))  # n = spare column
    k = e_hat.shape[0]
    is_pos = torch.zeros(k, n + 1, dtype=torch.bool, device=z_chunk.device).scatter_(1, slot, True)
    margin = pos_logits.new_zeros(k, n + 1).scatter(1, slot, pos_logits)
    logits = torch.where(is_pos[:, :n], margin[:, :n], s * (e_hat @ z_chunk.T))
    return torch.logsumexp(logits, dim=1)


def arc_margin_loss_normalized(
    z_hat: torch.Tensor, e_hat: torch.Tensor, positives: torch.Tensor, *,
    s: float, m: float, chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """L_arc from unit latents ``z_hat`` (N, D), unit stop-gradient codes ``e_hat`` (K, D) and the
    positives (K, top_k) of :func:`scan_cosines`. Returns a scalar; gradients reach z_hat only."""
    e_hat = e_hat.detach()
    pos_cos = torch.einsum("kd,kjd->kj", e_hat, z_hat[positives])
    pos_logits = s * margin_cosine(pos_cos, m)  # (K, top_k)
    numerator = torch.logsumexp(pos_logits, dim=1)
    spans = _chunks(z_hat.shape[0], chunk_size)
    recompute = len(spans) > 1 and torch.is_grad_enabled() and z_hat.requires_grad
    parts = []
    for start, end in spans:
        args = (z_hat[start:end], e_hat, positives - start, pos_logits, s)
        if recompute:
            parts.append(checkpoint(_chunk_logsumexp, *args, use_reentrant=False))
        else:
            parts.append(_chunk_logsumexp(*args))
    denominator = torch.logsumexp(torch.stack(parts, dim=1), dim=1)
    return (denominator - numerator).mean()


def validate_arc_options(s: float, m: float, top_k: int, chunk_size: Optional[int]) -> None:
    if not s > 0:
        raise ValueError(f"s (ArcLoss scale) must be > 0, got {s}")
    if not 0 <= m < math.pi:
        raise ValueError(f"m (ArcLoss angular margin) must be in [0, pi), got {m}")
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k (ArcLoss positives per code) must be an integer >= 1, got {top_k!r}")
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")


def arc_margin_loss(
    z: torch.Tensor, codebook: torch.Tensor, *, s: float = 10.0, m: float = 0.1,
    top_k: int = 3, chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """ArcLoss L_arc of METHOD.md eqs. 10-12 (a scalar tensor).

    Args:
        z: (N, D) raw latents (normalised here). Gradients flow to z only.
        codebook: (K, D) raw codes; used under stop-gradient.
        s: logit scale, > 0 (default 10; the reference VQ-VAE script hard-codes 5).
        m: additive angular margin in radians, in [0, pi) (default 0.1). Where theta + m >= pi the
            positive's logit is ``s * (cos(theta) - m sin(m))`` (see :func:`margin_cosine`).
        top_k: positives per code, 1 <= top_k <= N (default 3).
        chunk_size: latents per chunk; peak memory O(K * chunk_size) instead of O(K * N); same
            value and gradient (the positives are chosen over the whole batch). None: one chunk.

    Computed in float32 (or float64 for float64 inputs) with autocast disabled, so it stays
    finite under fp16/bf16 autocast: cosines are bounded, log-sum-exps are used throughout.
    """
    validate_arc_options(s, m, top_k, chunk_size)
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z must be (N, D) and codebook (K, D) with the same D, got "
                         f"{tuple(z.shape)} and {tuple(codebook.shape)}")
    if z.shape[0] < top_k:
        raise ValueError(f"top_k={top_k} exceeds the number of latents N={z.shape[0]}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z_hat = normalize_rows(z.to(dtype))
        e_hat = normalize_rows(codebook.detach().to(dtype))
        _, positives = scan_cosines(z_hat, e_hat, top_k, chunk_size)
        return arc_margin_loss_normalized(z_hat, e_hat, positives, s=s, m=m, chunk_size=chunk_size)
