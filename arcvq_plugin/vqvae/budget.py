"""Training budgets of ``arcvq-reproduce`` and the budget-relative ArcVQ schedule option.

Budgets (``--budget``):

- ``paper``: the row configs as they are: batch 1024, 500 epochs (29,500 steps per MNIST row).
- ``reduced``: ``configs/vqvae/reduced_budget.yaml`` merged over them: the CPU setting, what
  the main job trains.

Schedules (``--schedule``), an explicit deviation from the paper when not ``paper``: at a reduced
budget of T steps the paper's ``lambda(t) = gamma0 exp(-delta t)`` ends at ``exp(-delta T)`` (0.88
after 250 steps, the reduced budget) instead of ``exp(-delta T_paper)`` (4e-7 after 29,500). The
two others set ArcQuantizer's schedule horizon (``schedule_horizon: T``, the row's
``schedule_reference_horizon``: T_paper), so the rates are multiplied by ``T_paper / T``:

- ``relative``: ``schedule_rescale: both``: delta and alpha, so lambda(t) and R(t) = exp(alpha t)
  both have the paper's shape over the run: lambda(T) and R(T) equal the paper's lambda(T_paper)
  and R(T_paper);
- ``relative-lambda``: ``schedule_rescale: arc_weight``: delta only (the norm bound keeps the
  paper's alpha).

Both set only ArcQuantizer rows (a vanilla VQ row has no schedule).
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Mapping, Optional

import torch

from arcvq_plugin.quantizer import ArcQuantizer
from arcvq_plugin.schedules import arc_weight, effective_rates, radius
from arcvq_plugin.validation import check_choice, check_int

__all__ = ["BUDGETS", "SCHEDULES", "budget_config_paths", "is_arc_quantizer", "run_steps", "schedule_end",
           "schedule_overrides", "steps_per_epoch"]

BUDGETS = ("reduced", "paper")
SCHEDULES = ("paper", "relative", "relative-lambda")
SCHEDULE_RESCALES = {"relative": "both", "relative-lambda": "arc_weight"}
"""``--schedule`` -> the ArcQuantizer ``schedule_rescale`` it sets."""
REDUCED_BUDGET_FILE = "reduced_budget.yaml"
ARC_QUANTIZER_TARGETS = ("arcvq_plugin.ArcQuantizer", "arcvq_plugin.quantizer.ArcQuantizer")


def budget_config_paths(config_dir: Path, budget: str) -> list[Path]:
    """The config files merged over a row config for ``budget`` (none for ``paper``)."""
    check_choice("budget", budget, BUDGETS)
    return [Path(config_dir) / REDUCED_BUDGET_FILE] if budget == "reduced" else []


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over ``n_images`` (the last, smaller batch included)."""
    check_int("n_images", n_images, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    return math.ceil(n_images / batch_size)


def run_steps(n_images: int, batch_size: int, epochs: int, max_steps: Optional[int] = None) -> int:
    """Optimizer steps of a run: ``epochs`` epochs, or ``max_steps`` when that comes first."""
    steps = steps_per_epoch(n_images, batch_size) * epochs
    return steps if max_steps is None else min(steps, max_steps)


def is_arc_quantizer(quantizer_config: Optional[Mapping]) -> bool:
    """Whether a ``quantizer_config`` node builds an ArcQuantizer (the rows with ArcVQ schedules)."""
    return quantizer_config is not None and quantizer_config.get("target") in ARC_QUANTIZER_TARGETS


def schedule_overrides(schedule: str, steps: int, reference_steps: int) -> dict:
    """The ArcQuantizer options of ``--schedule`` for a run of ``steps`` codebook steps.

    Args:
        schedule: one of :data:`SCHEDULES`; ``paper`` returns ``{}``.
        steps: the run's codebook steps T (>= 1): ``schedule_horizon``.
        reference_steps: the steps for which the row's rates were set (the paper's run, >= 1):
            ``schedule_reference_horizon``.
    """
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "paper":
        return {}
    effective_rates(0.0, 0.0, steps, reference_steps, SCHEDULE_RESCALES[schedule])  # validates both horizons
    return {"schedule_horizon": int(steps), "schedule_reference_horizon": int(reference_steps),
            "schedule_rescale": SCHEDULE_RESCALES[schedule]}


def schedule_end(quantizer_params: Mapping, clock: int) -> tuple[float, float]:
    """``(lambda(clock), R(clock))`` of a new ArcQuantizer (clock origin 0) with ``quantizer_params``
    (absent keys take ArcQuantizer's defaults; an integer ``schedule_horizon`` rescales the rates)."""
    defaults = inspect.signature(ArcQuantizer).parameters
    value = {key: quantizer_params.get(key, defaults[key].default)
             for key in ("arc_gamma", "arc_gamma_decay", "bbnr_alpha", "schedule_horizon",
                         "schedule_reference_horizon", "schedule_rescale")}
    alpha, delta = float(value["bbnr_alpha"]), float(value["arc_gamma_decay"])
    if value["schedule_horizon"] is not None:
        alpha, delta = effective_rates(alpha, delta, value["schedule_horizon"],
                                       value["schedule_reference_horizon"], value["schedule_rescale"])
    t = torch.tensor(clock)
    return float(arc_weight(float(value["arc_gamma"]), delta, t)), float(radius(alpha, t))
