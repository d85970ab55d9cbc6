"""Ball-Bounded Norm Regularisation (BBNR, METHOD.md section 3): the bound's arithmetic.

``e_k <- e_k * min(1, R(t) / ||e_k||)`` is computed as ``e_k * exp(min(0, log R - log||e_k||))``:
the factor is an exp of a non-positive number, so no R(t) overflow can turn rows into inf or NaN,
and rows inside the ball are multiplied by exactly 1 (left bit-for-bit unchanged).

This module knows nothing of the quantiser: ``ArcQuantizer.after_optimizer_step`` calls
:func:`clip_rows_to_radius_`, and the hook that calls that after each optimizer step lives with
the callback (:mod:`arcvq_plugin.norm_bound_callback`).
"""
from __future__ import annotations

import math

import torch

__all__ = ["NORM_FLOOR", "clip_rows_to_radius_", "log_row_norms"]

NORM_FLOOR = 1e-12
"""Smallest norm divided by (row normalisation in ArcLoss and selection) or taken the log of."""


def log_row_norms(weight: torch.Tensor) -> torch.Tensor:
    """``log max(||w_k||, NORM_FLOOR)`` of each row of ``weight`` (K, D) -> (K, 1), in float32 or wider.

    Rows are scaled by their largest entry before squaring, so norms near float32's max (where a
    plain ``norm`` squares to inf) still come out finite.
    """
    w = weight.to(torch.promote_types(weight.dtype, torch.float32))
    peak = w.abs().amax(dim=1, keepdim=True).clamp_min(NORM_FLOOR)
    return (peak.log() + (w / peak).norm(dim=1, keepdim=True).log()).clamp_min(math.log(NORM_FLOOR))


@torch.no_grad()
def clip_rows_to_radius_(weight: torch.Tensor, log_radius: torch.Tensor) -> torch.Tensor:
    """Scale every row of ``weight`` (K, D) whose L2 norm exceeds ``exp(log_radius)`` onto the sphere.

    In place; directions never change; rows inside the ball are untouched; returns ``weight``.
    ``log_radius`` is a scalar tensor (any float dtype).
    """
    log_norms = log_row_norms(weight)
    log_scale = (log_radius.to(log_norms) - log_norms).clamp(max=0.0)
    weight.mul_(log_scale.exp().to(weight.dtype))
    return weight
