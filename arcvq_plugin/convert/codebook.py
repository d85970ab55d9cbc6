"""A pretrained codebook under ArcVQ's geometry: norm statistics, near-duplicates, the clock start.

ArcVQ bounds every row by ``R(t) = exp(alpha * t)`` after each optimizer step (METHOD.md 3). A
pretrained codebook has rows of any norm, so a converted model either

* keeps the rows (``mode="keep"``) and starts the clock at the first ``t0`` with
  ``R(t0) >= max_k ||e_k||`` (``t0 = ceil(log(max norm) / alpha)``, 0 when every norm <= 1):
  the first BBNR step moves nothing and the decoder sees the same vectors; or
* clips the rows onto the unit ball (``mode="unit-ball"``, what BBNR does at ``t = 0``) and
  starts at ``t0 = 0``: directions and hence cosine selection are unchanged, but every code with
  norm > 1 reaches the decoder shorter than it was trained with.

Whether a row lies inside the ball is always decided by ``arcvq_plugin.norm_bound.clip_rows_to_radius_``
itself (the function training applies), so rounding in its norm and log computations cannot make
the first step move a code that was meant to stay.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..norm_bound import NORM_FLOOR, clip_rows_to_radius_
from ..schedules import log_radius
from ..validation import check_int, check_real
from .checkpoint_io import ConversionError

__all__ = ["CODEBOOK_MODES", "check_codebook_norms", "codebook_statistics", "clock_start", "clip_to_unit_ball", "is_inside_bound", "row_norms"]

CODEBOOK_MODES = ("keep", "unit-ball")
DEGENERATE_NORM = 1e-8
MAX_CLOCK = 2 ** 62  # clock starts are int64 steps; headroom for the steps training adds


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """(K,) float32 L2 norms of the rows of ``weight`` (K, D)."""
    return weight.detach().float().norm(dim=1)


def check_codebook_norms(weight: torch.Tensor, key: str) -> None:
    """ConversionError naming ``key`` unless every row of ``weight`` (K, D) is finite and has a
    norm finite in float32 (below ~3.4e38), the precision the ArcQuantizer computes norms in."""
    if not bool(torch.isfinite(weight).all()):
        raise ConversionError(f"codebook {key!r} holds NaN or inf entries; every codebook entry must be finite")
    norms = row_norms(weight)
    if not bool(torch.isfinite(norms).all()):
        row = int((~torch.isfinite(norms)).nonzero()[0])
        raise ConversionError(
            f"codebook {key!r}: row {row} has a norm that overflows float32 (|entries| up to "
            f"{float(weight.detach().abs().max()):.3g}); codebook row norms must be below "
            f"{torch.finfo(torch.float32).max:.3g}: the checkpoint is damaged or its codebook was rescaled"
        )


def is_inside_bound(weight: torch.Tensor, clock: int, alpha: float) -> bool:
    """True when BBNR at ``clock`` leaves ``weight`` bit-for-bit unchanged."""
    radius_log = log_radius(alpha, torch.tensor(clock, dtype=torch.int64))
    return torch.equal(clip_rows_to_radius_(weight.detach().clone(), radius_log), weight.detach())


def clock_start(weight: torch.Tensor, alpha: float) -> int:
    """Smallest clock ``t0 >= 0`` at which ``R(t0) = exp(alpha * t0)`` covers every row of ``weight``.

    Args:
        weight: (K, D) codebook.
        alpha: BBNR growth rate, >= 0.

    Raises:
        ConversionError: ``alpha == 0`` (fixed bound R = 1) while some norm exceeds 1: keeping the
            codebook is impossible, the first step would clip those rows.
    """
    check_real("bbnr_alpha", alpha, minimum=0.0)
    max_norm = float(row_norms(weight).max())
    if is_inside_bound(weight, 0, alpha):
        return 0
    if alpha == 0.0:
        raise ConversionError(
            f"bbnr_alpha=0 fixes the bound at R=1, but the largest codebook norm is {max_norm:.9g} > 1: the first "
            "optimizer step would clip those codes, so the codebook cannot be kept. Use a bbnr_alpha > 0 (the clock "
            "then starts where R(t0) covers the norms) or --codebook unit-ball"
        )
    exact_t0 = math.log(max_norm) / alpha
    if exact_t0 >= MAX_CLOCK:
        raise ConversionError(
            f"the largest codebook norm {max_norm:.6g} needs a clock start log(norm) / bbnr_alpha = {exact_t0:.3g}, "
            f"beyond the int64 clock (at most {MAX_CLOCK}); use a larger --bbnr-alpha or --codebook unit-ball"
        )
    t0 = max(0, math.ceil(exact_t0))
    while not is_inside_bound(weight, t0, alpha):  # floating-point rounding can leave t0 one step short
        t0 += 1
    return t0


def clip_to_unit_ball(weight: torch.Tensor) -> torch.Tensor:
    """A copy of ``weight`` with rows of norm > 1 scaled to norm 1 (BBNR at t = 0), same dtype.

    Rows that rounding leaves a hair above 1 are shrunk by one ulp at a time (a few at most), so
    that BBNR at t = 0 then moves nothing and the clock can start at 0.
    """
    unit_log_radius = torch.zeros((), dtype=torch.float64)
    out = clip_rows_to_radius_(weight.detach().clone(), unit_log_radius)
    shrink = 1.0 - torch.finfo(out.dtype).eps
    for _ in range(8):
        moved = (clip_rows_to_radius_(out.clone(), unit_log_radius) != out).any(dim=1)
        if not bool(moved.any()):
            break
        out[moved] = out[moved] * shrink
    return out


def codebook_statistics(weight: torch.Tensor, *, near_duplicate_cosine: float | None = 0.99, chunk_size: int = 1024,
                        max_examples: int = 10) -> dict[str, Any]:
    """Norms, exact duplicates and near-duplicate pairs of a codebook.

    Args:
        weight: (K, D) codebook.
        near_duplicate_cosine: pairs i < j with cosine above this are near-duplicates; in (-1, 1],
            default 0.99; None skips the pairwise scan (K**2 * D work: seconds for K = 16384 on a
            CPU). Under cosine selection, codes pointing the same way shadow each other whatever
            their norms.
        chunk_size: rows per (chunk, K) cosine block (memory ~ 4 * chunk_size * K bytes); >= 1.
        max_examples: how many of the most similar pairs to list; >= 0.

    Returns:
        dict with ``n_embed``, ``embed_dim``, ``norm`` (min/max/mean/std/median/p01/p99,
        ``n_above_1``, ``n_degenerate`` (norm < 1e-8: no direction), ``all_equal``),
        ``exact_duplicates`` (codes equal to an earlier code), ``near_duplicates`` (threshold,
        ``pairs``, ``codes_involved``, ``examples`` as [i, j, cosine]; None when skipped).
    """
    if near_duplicate_cosine is not None:
        check_real("near_duplicate_cosine", near_duplicate_cosine, minimum=-1.0, exclusive=True, maximum=1.0)
    check_int("chunk_size", chunk_size, minimum=1)
    check_int("max_examples", max_examples, minimum=0)
    w = weight.detach().float()
    norms = row_norms(w)
    quantiles = torch.quantile(norms.double(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)).tolist()
    near = None if near_duplicate_cosine is None else _near_duplicates(w, norms, near_duplicate_cosine, chunk_size,
                                                                         max_examples)
    unique_rows = torch.unique(w, dim=0).shape[0]
    return {
        "n_embed": int(w.shape[0]),
        "embed_dim": int(w.shape[1]),
        "norm": {
            "min": float(norms.min()), "max": float(norms.max()), "mean": float(norms.mean()),
            "std": float(norms.std()) if len(norms) > 1 else 0.0,
            "p01": quantiles[0], "median": quantiles[1], "p99": quantiles[2],
            "n_above_1": int((norms > 1).sum()), "n_degenerate": int((norms < DEGENERATE_NORM).sum()),
            "all_equal": bool(torch.all(norms == norms[0])),
        },
        "exact_duplicates": int(w.shape[0] - unique_rows),
        "near_duplicates": near,
    }


def _near_duplicates(w: torch.Tensor, norms: torch.Tensor, threshold: float, chunk_size: int,
                     max_examples: int) -> dict[str, Any]:
    """Pairs i < j of rows of ``w`` (K, D) with cosine > ``threshold``, scanned in (chunk, K - start) blocks."""
    unit = w / norms.clamp_min(NORM_FLOOR)[:, None]
    pairs, involved = 0, torch.zeros(len(w), dtype=torch.bool)
    best_cos, best_partner = torch.full((len(w),), -2.0), torch.zeros(len(w), dtype=torch.long)
    for start in range(0, len(w), chunk_size):
        stop = min(start + chunk_size, len(w))
        cos = unit[start:stop] @ unit[start:].T  # rows start..stop-1 against columns start..K-1
        cos[:, :stop - start].masked_fill_(torch.ones(stop - start, stop - start, dtype=torch.bool).tril(), -2.0)  # j > i
        values, partners = cos.max(dim=1)
        best_cos[start:stop], best_partner[start:stop] = values, partners + start
        rows = values > threshold
        if bool(rows.any()):
            hits = cos[rows] > threshold
            pairs += int(hits.sum())
            involved[start:stop] |= rows
            involved[start:] |= hits.any(dim=0)
    order = best_cos.argsort(descending=True)[:max_examples]
    best = [(float(best_cos[i]), int(i), int(best_partner[i])) for i in order if best_cos[i] > threshold]
    return {
        "cosine_threshold": threshold,
        "pairs": pairs,
        "codes_involved": int(involved.sum()),
        "examples": [[i, j, round(c, 6)] for c, i, j in best],
    }
