"""The two clock-driven schedules of ArcVQ (METHOD.md sections 3 and 5), overflow-safe.

Both take the integer clock ``t`` (optimizer steps of the codebook's optimizer) as a tensor so
that computing them needs no host sync. ``R(t) = exp(alpha * t)`` overflows float32 near
``alpha * t = 88.7``; the bound is therefore handled in log space (``log_radius``) and only
exponentiated where the result is <= 1 or for display (``radius`` saturates at float32 max).
"""
from __future__ import annotations

import torch

__all__ = ["clock_as_float", "log_radius", "radius", "arc_weight"]


def clock_as_float(clock: torch.Tensor) -> torch.Tensor:
    """The clock as float64 (float32 on MPS, which has no float64): exact up to 2**53 steps."""
    dtype = torch.float32 if clock.device.type == "mps" else torch.float64
    return clock.to(dtype)


def log_radius(alpha: float, clock: torch.Tensor) -> torch.Tensor:
    """``log R(t) = alpha * t``; shape of ``clock``."""
    return alpha * clock_as_float(clock)


def radius(alpha: float, clock: torch.Tensor) -> torch.Tensor:
    """``R(t) = exp(alpha * t)`` in float32, saturating at float32's max instead of inf."""
    limit = torch.finfo(torch.float32).max
    return log_radius(alpha, clock).exp().clamp(max=limit).float()


def arc_weight(gamma: float, decay: float, clock: torch.Tensor) -> torch.Tensor:
    """``lambda(t) = gamma * exp(-decay * t)`` in float32 (exp of a non-positive number)."""
    return (gamma * torch.exp(-decay * clock_as_float(clock))).float()
