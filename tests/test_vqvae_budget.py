"""Budgets and the budget-relative schedule of arcvq-reproduce."""
import math

import pytest
import torch

from arcvq_plugin.schedules import arc_weight, radius
from arcvq_plugin.vqvae.budget import run_steps, schedule_overrides

PAPER = {"bbnr_alpha": 3e-4, "arc_gamma_decay": 5e-4}
PAPER_STEPS = 29_500  # MNIST: ceil(60000 / 1024) * 500


def test_step_counts():
    assert run_steps(60_000, 1024, 500) == PAPER_STEPS
    assert run_steps(60_000, 256, 3) == 705 and run_steps(60_000, 256, 3, max_steps=100) == 100


@pytest.mark.parametrize("steps", [235, 705])
def test_relative_schedule_ends_where_the_papers_ends(steps):
    scaled = schedule_overrides(PAPER, "relative", PAPER_STEPS / steps)
    end, paper_end = torch.tensor(steps), torch.tensor(PAPER_STEPS)
    assert float(arc_weight(1.0, scaled["arc_gamma_decay"], end)) == pytest.approx(float(arc_weight(1.0, 5e-4, paper_end)), rel=1e-6)
    assert float(radius(scaled["bbnr_alpha"], end)) == pytest.approx(float(radius(3e-4, paper_end)), rel=1e-6)
    assert float(arc_weight(1.0, 5e-4, paper_end)) == pytest.approx(math.exp(-14.75), rel=1e-6)  # ~4e-7
    # and the same shape in between: halfway through the run is the paper's halfway
    half = torch.tensor(steps / 2)
    assert float(arc_weight(1.0, scaled["arc_gamma_decay"], half)) == pytest.approx(
        float(arc_weight(1.0, 5e-4, torch.tensor(PAPER_STEPS / 2))), rel=1e-6)


def test_relative_lambda_leaves_the_bound_and_paper_changes_nothing():
    assert set(schedule_overrides(PAPER, "relative-lambda", 10.0)) == {"arc_gamma_decay"}
    assert schedule_overrides(PAPER, "relative-lambda", 10.0)["arc_gamma_decay"] == pytest.approx(5e-3)
    assert schedule_overrides(PAPER, "paper", 10.0) == {}
    assert schedule_overrides({}, "relative", 2.0) == {"arc_gamma_decay": 1e-3, "bbnr_alpha": 6e-4}  # ArcQuantizer defaults
    with pytest.raises(ValueError, match="schedule"):
        schedule_overrides(PAPER, "cosine", 1.0)
