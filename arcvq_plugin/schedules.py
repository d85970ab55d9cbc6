"""The two clock-driven schedules of ArcVQ (METHOD.md sections 3 and 5), overflow-safe, and their
rescaling to a run's length (the schedule horizon).

Both take the integer clock ``t`` (optimizer steps of the codebook's optimizer) as a tensor so
that computing them needs no host sync. ``R(t) = exp(alpha * t)`` overflows float32 near
``alpha * t = 88.7``; the bound is therefore handled in log space (``log_radius``) and only
exponentiated where the result is <= 1 or for display (``radius`` saturates at float32 max).

The schedule horizon: ``alpha`` and ``delta`` were set for a run of ``T_ref`` codebook steps (the
reference horizon; the paper's MNIST / CIFAR-10 runs: 29,500). For a run of ``T`` steps,
:func:`effective_rates` gives ``delta * T_ref / T`` (and ``alpha * T_ref / T`` with rescale
``"both"``), so that ``lambda`` and ``R`` reach at step ``T`` what the paper's schedule reached at
``T_ref``. The rescaled rates apply from the clock's ``origin`` on (the clock at which the horizon's
run began: 0 for a new codebook); before it, the configured rates (:func:`rescaled_exponent`).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .validation import check_choice, check_int

__all__ = ["IMAGENET_REFERENCE_HORIZON", "SCHEDULE_RESCALES", "arc_weight", "arc_weight_from_exponent",
           "check_schedule_options", "clock_as_float", "effective_rates", "log_radius", "radius", "radius_from_log",
           "rescaled_exponent"]

IMAGENET_REFERENCE_HORIZON = 640_590
"""Codebook steps of the paper's ImageNet run, for which its rates (alpha 1e-5, delta 1e-4) were set:
Table 7's 15 epochs of batch 30 over ImageNet's 1,281,167 training images, ceil(1,281,167 / 30) =
42,706 steps per epoch x 15."""
SCHEDULE_RESCALES = ("arc_weight", "both")
"""``"arc_weight"``: only the ArcLoss decay delta follows the horizon; ``"both"``: delta and the
norm bound's growth alpha."""


def clock_as_float(clock: torch.Tensor) -> torch.Tensor:
    """The clock as float64 (float32 on MPS, which has no float64): exact up to 2**53 steps."""
    dtype = torch.float32 if clock.device.type == "mps" else torch.float64
    return clock.to(dtype)


def log_radius(alpha: float, clock: torch.Tensor) -> torch.Tensor:
    """``log R(t) = alpha * t``; shape of ``clock``."""
    return alpha * clock_as_float(clock)


def radius_from_log(log_bound: torch.Tensor) -> torch.Tensor:
    """``exp(log_bound)`` in float32, saturating at float32's max instead of inf."""
    limit = torch.finfo(torch.float32).max
    return log_bound.exp().clamp(max=limit).float()


def radius(alpha: float, clock: torch.Tensor) -> torch.Tensor:
    """``R(t) = exp(alpha * t)`` in float32, saturating at float32's max instead of inf."""
    return radius_from_log(log_radius(alpha, clock))


def arc_weight_from_exponent(gamma: float, exponent: torch.Tensor) -> torch.Tensor:
    """``gamma * exp(-exponent)`` in float32 (``exponent`` >= 0: the decay so far)."""
    return (gamma * torch.exp(-exponent)).float()


def arc_weight(gamma: float, decay: float, clock: torch.Tensor) -> torch.Tensor:
    """``lambda(t) = gamma * exp(-decay * t)`` in float32 (exp of a non-positive number)."""
    return arc_weight_from_exponent(gamma, decay * clock_as_float(clock))


def rescaled_exponent(rate: float, effective_rate: float, clock: torch.Tensor,
                      origin: Union[int, torch.Tensor]) -> torch.Tensor:
    """``rate * origin + effective_rate * (clock - origin)``, in the clock's float dtype.

    The exponent of a schedule whose configured ``rate`` ran up to the clock value ``origin`` (an
    int, or a tensor like ``clock``) and ``effective_rate`` since: ``log R(t)`` with the alphas,
    ``-log(lambda(t) / gamma)`` with the deltas.
    """
    origin_float = clock_as_float(origin) if isinstance(origin, torch.Tensor) else float(origin)
    return rate * origin_float + effective_rate * (clock_as_float(clock) - origin_float)


def effective_rates(alpha: float, delta: float, horizon: int, reference_horizon: int,
                    rescale: str) -> tuple[float, float]:
    """``(alpha', delta')`` for a run of ``horizon`` codebook steps.

    ``delta' = delta * reference_horizon / horizon``; ``alpha'`` likewise with ``rescale="both"``,
    else ``alpha``. Both horizons are integers >= 1.
    """
    check_int("schedule_horizon", horizon, minimum=1)
    check_int("schedule_reference_horizon", reference_horizon, minimum=1)
    check_choice("schedule_rescale", rescale, SCHEDULE_RESCALES)
    factor = reference_horizon / horizon
    return (alpha * factor if rescale == "both" else alpha), delta * factor


def check_schedule_options(horizon: Any, reference_horizon: Any, rescale: Any
                           ) -> tuple[Optional[Union[int, str]], Optional[int], str]:
    """The validated ``(schedule_horizon, schedule_reference_horizon, schedule_rescale)``.

    ``schedule_horizon``: None (the paper's absolute schedules), ``"auto"`` (the run's length,
    resolved by ``NormBoundCallback``) or an integer >= 1. ``schedule_reference_horizon``: None or
    an integer >= 1, required when ``schedule_horizon`` is set. ``schedule_rescale``: one of
    :data:`SCHEDULE_RESCALES`.
    """
    if not (horizon is None or horizon == "auto"
            or (isinstance(horizon, int) and not isinstance(horizon, bool) and horizon >= 1)):
        raise ValueError(f"schedule_horizon must be None, 'auto' or an integer >= 1 (codebook optimizer "
                         f"steps), got {horizon!r}")
    if reference_horizon is not None:
        reference_horizon = check_int("schedule_reference_horizon", reference_horizon, minimum=1)
    elif horizon is not None:
        raise ValueError("schedule_reference_horizon must be an integer >= 1 when schedule_horizon is set "
                         "(the run length, in codebook steps, for which bbnr_alpha and arc_gamma_decay "
                         "were set; the paper's MNIST / CIFAR-10 runs: 29500), got None")
    check_choice("schedule_rescale", rescale, SCHEDULE_RESCALES)
    return horizon, reference_horizon, rescale
