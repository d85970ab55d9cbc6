"""ArcCosine Additive Margin loss, ArcLoss (METHOD.md section 4).

Every code e_k is an anchor; its ``top_k`` most similar latents (largest cosine, over the whole
batch) are positives whose logit carries an additive angular margin, every other latent of the
batch is a negative::

    c_ki     = hat(sg[e_k]) . hat(z_i)
    logit_ki = s * cos(theta_ki + m)   for i in P_k,   s * c_ki otherwise
    L_arc    = -(1/K) sum_k log( sum_{i in P_k} exp(logit_ki) / sum_i exp(logit_ki) )

Computed as ``mean_k( logaddexp(lse_neg_k, lse_pos_k) - lse_pos_k )`` where ``lse_pos_k`` is the
logsumexp over the positives' margin logits and ``lse_neg_k`` over every other latent's plain
logit. One pass over the cosine matrix (:func:`scan_cosines`) yields the selected codes, the
positives and ``lse_neg``; the backward of ``lse_neg`` (:class:`_NegativeLogSumExp`) is one
matrix product with the softmax weights the dense scan kept. The N latents can be processed in
chunks instead: peak memory is then O(K * chunk) instead of O(K * N), each block is recomputed
once in backward, and value and gradient equal the dense computation (the positives are still
chosen over the whole batch). No one-hot matrix, no host synchronisation.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .norm_bound import NORM_FLOOR
from .validation import check_int, check_optional_int, check_real

__all__ = ["ARCCOS_CLAMP", "CosineScan", "arc_margin_loss", "arc_margin_loss_normalized", "margin_cosine",
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


class CosineScan(NamedTuple):
    """What one pass over the K x N cosine matrix yields (see :func:`scan_cosines`)."""

    nearest: torch.Tensor
    """(N,) int64: ``argmax_k z_hat_i . e_hat_k``, the selected code of each latent."""
    positives: Optional[torch.Tensor]
    """(K, top_k) int64: each code's most similar latents (None when top_k is 0)."""
    negative_lse: Optional[torch.Tensor]
    """(K,): ``logsumexp_{i not in P_k} s * c_ki``, the negatives' part of the denominator
    (-inf when every latent is a positive; None when top_k is 0). No gradient."""
    weights: Optional[torch.Tensor] = None
    """(K, N) ``exp(s * c_ki - peak_k)`` with the positives at 0, kept by a dense scan
    (``chunk_size=None``) so that the backward needs no second pass; else None."""
    peak: Optional[torch.Tensor] = None
    """(K,) the shift of ``weights`` (None with them)."""


ARGMAX_BLOCK = 16
"""Codes per block in :func:`_argmax_over_codes` (a maximum over the leading dimension of a
(K, n) matrix is a fast vectorised ``amax``; ``argmax`` over it is not)."""


def _argmax_over_codes(cos: torch.Tensor) -> torch.Tensor:
    """``cos.argmax(dim=0)`` of a (K, n) matrix (first index among ties), in two cheap passes:
    the best block of ``ARGMAX_BLOCK`` codes per latent from block maxima, then the best code
    inside it. Returns (n,) int64."""
    k, n = cos.shape
    full = k - k % ARGMAX_BLOCK
    if full == 0:
        return cos.argmax(dim=0)
    blocks = cos[:full].view(full // ARGMAX_BLOCK, ARGMAX_BLOCK, n)
    block = blocks.amax(dim=1).argmax(dim=0)  # (n,)
    columns = torch.arange(n, device=cos.device)
    best = block * ARGMAX_BLOCK + blocks[block, :, columns].argmax(dim=1)
    if full < k:
        tail_val, tail_idx = cos[full:].max(dim=0)
        best = torch.where(tail_val > cos[best, columns], tail_idx + full, best)
    return best


TOPK_BLOCK = 16
"""Latents per block in :func:`_topk_rows`."""


def _topk_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=1)`` of a (K, n) matrix (values descending, indices into n), from blocks.

    The columns are split into blocks of ``TOPK_BLOCK`` (block j: columns j, j + B, j + 2B, ...
    for B blocks, so that the block maxima are one fast vectorised ``amax``). Each row's k largest
    entries lie in the k blocks with the largest maxima, so the exact top-k is taken among those
    k * TOPK_BLOCK candidates (plus the columns left over after the last whole block).
    """
    rows, n = x.shape
    full = n - n % TOPK_BLOCK
    blocks = full // TOPK_BLOCK
    if blocks <= k:
        return x.topk(k, dim=1)
    best_blocks = x[:, :full].view(rows, TOPK_BLOCK, blocks).amax(dim=1).topk(k, dim=1).indices
    columns = (best_blocks[:, :, None]
               + torch.arange(TOPK_BLOCK, device=x.device) * blocks).view(rows, -1)  # (K, k * TOPK_BLOCK)
    if full < n:
        tail = torch.arange(full, n, device=x.device).expand(rows, n - full)
        columns = torch.cat([columns, tail], dim=1)
    val, pick = x.gather(1, columns).topk(k, dim=1)
    return val, columns.gather(1, pick)


def _logsumexp_rows_(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp of (K, n) ``logits``, overwriting them; rows of -inf give -inf. (K,)."""
    peak = logits.amax(dim=1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return logits.sub_(peak).exp_().sum(dim=1).log_().add_(peak.squeeze(1))


def _chunks(n: int, chunk_size: Optional[int]) -> list[tuple[int, int]]:
    step = n if chunk_size is None else chunk_size
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _cosine_blocks(z_hat: torch.Tensor, e_hat: torch.Tensor, chunk_size: Optional[int]):
    """Yield ``(start, end, e_hat @ z_hat[start:end].T)`` per chunk of latents.

    Every (K, n_chunk) block is written into one workspace allocated once per call: the caller
    may overwrite a block in place, and it is gone once the next one is yielded. (Fresh large
    allocations are costly on the CPU, where each one is mapped and zero-filled page by page.)
    """
    spans = _chunks(z_hat.shape[0], chunk_size)
    k = e_hat.shape[0]
    workspace = torch.empty(k * (spans[0][1] - spans[0][0]), dtype=e_hat.dtype, device=e_hat.device)
    for start, end in spans:
        block = workspace[: k * (end - start)].view(k, end - start)
        yield start, end, torch.mm(e_hat, z_hat[start:end].T, out=block)


@torch.no_grad()
def scan_cosines(
    z_hat: torch.Tensor, e_hat: torch.Tensor, top_k: int, chunk_size: Optional[int] = None, *,
    s: float = 10.0,
) -> CosineScan:
    """One pass over the cosine matrix for code selection, ArcLoss positives and negatives.

    Args:
        z_hat: (N, D) unit latents. e_hat: (K, D) unit codes.
        top_k: positives per code (0: selection only). chunk_size: latents per chunk; the
            (K, chunk) block is the only large temporary. None: dense, one (K, N) block, kept as
            ``weights`` for the backward (fastest; it lives until the backward).
        s: ArcLoss logit scale for ``negative_lse`` (default 10).
    Returns:
        :class:`CosineScan`. The positives are chosen over the whole batch: each chunk's own
        top-k is merged into a running top-k, and every latent leaving (or never entering) it is
        added to the running negatives' logsumexp, so no logit is ever subtracted.
    """
    n = z_hat.shape[0]
    nearest = torch.empty(n, dtype=torch.long, device=z_hat.device)
    best_val = best_idx = negative_lse = kept_weights = kept_peak = None
    for start, end, cos in _cosine_blocks(z_hat, e_hat, chunk_size):  # cos: (K, n_chunk)
        nearest[start:end] = _argmax_over_codes(cos)
        if not top_k:
            continue
        val, idx = _topk_rows(cos, min(top_k + 1, end - start))  # (K, k'), descending
        if val.shape[1] > top_k:  # the (top_k + 1)-th cosine is the largest of the chunk's rest
            peak = s * val[:, top_k:]
            logits = torch.add(-peak, cos, alpha=s, out=cos).scatter_(1, idx[:, :top_k], -math.inf)
            rest = logits.exp_().sum(dim=1).log_().add_(peak.squeeze(1))
            val, idx = val[:, :top_k], idx[:, :top_k]
            if chunk_size is None:  # dense: keep the weights for the backward
                kept_weights, kept_peak = logits, peak.squeeze(1)
        else:  # every latent of the chunk is among its top-k
            rest = torch.full_like(val[:, 0], -math.inf)
        idx = idx + start
        if best_val is None:
            best_val, best_idx, negative_lse = val, idx, rest
            continue
        cand_val, cand_idx = torch.cat([best_val, val], dim=1), torch.cat([best_idx, idx], dim=1)
        best_val, pick = cand_val.topk(min(top_k, end), dim=1)
        best_idx = cand_idx.gather(1, pick)
        evicted = _logsumexp_rows_((s * cand_val).scatter_(1, pick, -math.inf))
        negative_lse = torch.logaddexp(torch.logaddexp(negative_lse, rest), evicted)
    return CosineScan(nearest, best_idx, negative_lse, kept_weights, kept_peak)


class _NegativeLogSumExp(torch.autograd.Function):
    """``negative_lse`` of :func:`scan_cosines` as a function of ``z_hat`` (gradient to z_hat only).

    Forward returns the scan's value. The gradient is ``grad_z = W^T @ (grad * s * e_hat)`` with
    softmax weights ``W_ki = exp(s c_ki - negative_lse_k)`` (0 at the positives). With the scan's
    kept one-chunk ``weights`` (dense) that is one matrix product; otherwise backward recomputes
    each (K, chunk) block of W once and accumulates chunk by chunk, so nothing of size K x N is
    kept between forward and backward.
    """

    @staticmethod
    def forward(ctx, z_hat, e_hat, scan, s, chunk_size):
        ctx.save_for_backward(z_hat, e_hat, scan.positives, scan.negative_lse)
        ctx.kept, ctx.s, ctx.chunk_size = (scan.weights, scan.peak), s, chunk_size
        return scan.negative_lse.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z_hat, e_hat, positives, negative_lse = ctx.saved_tensors
        weights, peak = ctx.kept
        ctx.kept = None
        s = ctx.s
        finite = torch.isfinite(negative_lse)
        with torch.autocast(device_type=z_hat.device.type, enabled=False):  # as the forward
            if weights is not None:  # W = weights * exp(peak - negative_lse), row by row
                row_scale = torch.where(finite, (peak - negative_lse).exp(), torch.zeros_like(peak))
                codes = (s * grad * row_scale)[:, None] * e_hat
                return (codes.T @ weights).T.contiguous(), None, None, None, None  # = weights.T @ codes
            shift = torch.where(finite, negative_lse, torch.zeros_like(negative_lse))[:, None]
            scaled_codes = (s * grad)[:, None] * e_hat
            grad_z = torch.empty_like(z_hat)
            for start, end, logits in _cosine_blocks(z_hat, e_hat, ctx.chunk_size):
                torch.add(-shift, logits, alpha=s, out=logits)  # s * c - negative_lse
                local = positives - start
                inside = (local >= 0) & (local < end - start)
                mask = torch.full_like(local, math.inf, dtype=logits.dtype).masked_fill_(inside, -math.inf)
                logits.scatter_reduce_(1, local.clamp(0, end - start - 1), mask, reduce="amin")
                torch.mm(logits.exp_().T, scaled_codes, out=grad_z[start:end])
        return grad_z, None, None, None, None


def arc_margin_loss_normalized(
    z_hat: torch.Tensor, e_hat: torch.Tensor, scan: CosineScan, *,
    s: float, m: float, chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """L_arc from unit latents ``z_hat`` (N, D), unit stop-gradient codes ``e_hat`` (K, D) and the
    :class:`CosineScan` of both (same ``s`` and ``chunk_size``). Returns a scalar; gradients reach
    z_hat only. Denominator: ``logaddexp(negatives' logsumexp, positives' logsumexp)``."""
    e_hat = e_hat.detach()
    # index_select, not z_hat[scan.positives]: its backward (index_add_) sums repeated positives in a
    # fixed order on the CPU, where advanced indexing's (index_put_ with accumulate) does not
    positive_latents = z_hat.index_select(0, scan.positives.flatten()).view(*scan.positives.shape, -1)
    pos_cos = torch.einsum("kd,kjd->kj", e_hat, positive_latents)
    pos_logits = s * margin_cosine(pos_cos, m)  # (K, top_k)
    numerator = torch.logsumexp(pos_logits, dim=1)
    negatives = _NegativeLogSumExp.apply(z_hat, e_hat, scan, s, chunk_size)
    denominator = torch.logaddexp(negatives, numerator)
    return (denominator - numerator).mean()


def validate_arc_options(s: float, m: float, top_k: int, chunk_size: Optional[int], *,
                         prefix: str = "") -> None:
    """ValueError naming ``prefix + name`` and its range for a bad ArcLoss option: ``s`` finite
    > 0, ``m`` in [0, pi), ``top_k`` an integer >= 1, ``chunk_size`` None or an integer >= 1."""
    check_real(f"{prefix}s", s, minimum=0.0, exclusive=True)
    check_real(f"{prefix}m", m, minimum=0.0, below=math.pi, below_text="pi")
    check_int(f"{prefix}top_k", top_k, minimum=1)
    check_optional_int(f"{prefix}chunk_size", chunk_size, minimum=1)


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
        chunk_size: latents per chunk; peak memory O(K * chunk_size) instead of O(K * N), at the
            cost of recomputing each (K, chunk) block once in backward; same value and gradient
            (the positives are chosen over the whole batch). None: dense, one (K, N) block kept
            from forward to backward (fastest).

    Computed in float32 (or float64 for float64 inputs) with autocast disabled, so it stays
    finite under fp16/bf16 autocast: cosines are bounded, log-sum-exps are used throughout.
    """
    validate_arc_options(s, m, top_k, chunk_size)
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z must be (N, D) and codebook (K, D) with the same D, got "
                         f"{tuple(z.shape)} and {tuple(codebook.shape)}")
    if z.shape[0] < top_k:
        raise ValueError(f"top_k must be <= the number of latents N={z.shape[0]}, got {top_k}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z_hat = normalize_rows(z.to(dtype))
        e_hat = normalize_rows(codebook.detach().to(dtype))
        scan = scan_cosines(z_hat, e_hat, top_k, chunk_size, s=s)
        return arc_margin_loss_normalized(z_hat, e_hat, scan, s=s, m=m, chunk_size=chunk_size)
