"""Training budgets of ``arcvq-reproduce`` and the budget-relative ArcVQ schedule option.

Budgets (``--budget``):

- ``paper``: the row configs as they are: batch 1024, 500 epochs (29,500 steps per MNIST row).
- ``reduced``: ``configs/vqvae/reduced_budget.yaml`` merged over them: the CPU setting, what
  the main job trains.

Schedules (``--schedule``), an explicit deviation from the paper when not ``paper``: at a reduced
budget of T steps the paper's ``lambda(t) = gamma0 exp(-delta t)`` ends at ``exp(-delta T)`` (0.88
after 250 steps, the reduced budget) instead of ``exp(-delta T_paper)`` (4e-7 after 29,500). With
``factor = T_paper / T``:

- ``relative``: ``delta <- delta * factor`` and ``alpha <- alpha * factor``, so lambda(t) and
  R(t) = exp(alpha t) both have the paper's shape over the run: lambda(T) and R(T) equal the
  paper's lambda(T_paper) and R(T_paper);
- ``relative-lambda``: ``delta <- delta * factor`` only (the norm bound keeps the paper's alpha).

Both rescale only ArcQuantizer rows (a vanilla VQ row has no schedule).
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Mapping, Optional

from arcvq_plugin.quantizer import ArcQuantizer

__all__ = ["BUDGETS", "SCHEDULES", "budget_config_paths", "is_arc_quantizer", "run_steps", "schedule_overrides",
           "steps_per_epoch"]

BUDGETS = ("reduced", "paper")
SCHEDULES = ("paper", "relative", "relative-lambda")
REDUCED_BUDGET_FILE = "reduced_budget.yaml"
ARC_QUANTIZER_TARGETS = ("arcvq_plugin.ArcQuantizer", "arcvq_plugin.quantizer.ArcQuantizer")


def budget_config_paths(config_dir: Path, budget: str) -> list[Path]:
    """The config files merged over a row config for ``budget`` (none for ``paper``)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return [Path(config_dir) / REDUCED_BUDGET_FILE] if budget == "reduced" else []


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over ``n_images`` (the last, smaller batch included)."""
    if n_images < 1 or batch_size < 1:
        raise ValueError(f"n_images and batch_size must be >= 1, got {n_images} and {batch_size}")
    return math.ceil(n_images / batch_size)


def run_steps(n_images: int, batch_size: int, epochs: int, max_steps: Optional[int] = None) -> int:
    """Optimizer steps of a run: ``epochs`` epochs, or ``max_steps`` when that comes first."""
    steps = steps_per_epoch(n_images, batch_size) * epochs
    return steps if max_steps is None else min(steps, max_steps)


def is_arc_quantizer(quantizer_config: Optional[Mapping]) -> bool:
    """Whether a ``quantizer_config`` node builds an ArcQuantizer (the rows with ArcVQ schedules)."""
    return quantizer_config is not None and quantizer_config.get("target") in ARC_QUANTIZER_TARGETS


def schedule_overrides(quantizer_params: Mapping, schedule: str, factor: float) -> dict[str, float]:
    """The rescaled ``{"arc_gamma_decay": ..., "bbnr_alpha": ...}`` of an ArcQuantizer's params.

    Args:
        quantizer_params: the row's ArcQuantizer params (``bbnr_alpha``, ``arc_gamma_decay``;
            absent keys take ArcQuantizer's defaults).
        schedule: one of :data:`SCHEDULES`; ``paper`` returns ``{}``.
        factor: paper steps / run steps (> 0).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if schedule == "paper":
        return {}
    defaults = inspect.signature(ArcQuantizer).parameters
    keys = ("arc_gamma_decay", "bbnr_alpha") if schedule == "relative" else ("arc_gamma_decay",)
    return {key: float(quantizer_params.get(key, defaults[key].default)) * factor for key in keys}
