"""Budgets and the budget-relative schedule of arcvq-reproduce."""
import math

import pytest
import torch

from arcvq_plugin.schedules import arc_weight, radius
from arcvq_plugin.vqvae.budget import run_steps, schedule_end, schedule_overrides

PAPER = {"bbnr_alpha": 3e-4, "arc_gamma_decay": 5e-4}
PAPER_STEPS = 29_500  # MNIST: ceil(60000 / 1024) * 500


def test_step_counts():
    assert run_steps(60_000, 1024, 500) == PAPER_STEPS
    assert run_steps(60_000, 256, 3) == 705 and run_steps(60_000, 256, 3, max_steps=100) == 100


@pytest.mark.parametrize("steps", [235, 705])
def test_relative_schedule_ends_where_the_papers_ends(steps):
    params = {**PAPER, **schedule_overrides("relative", steps, PAPER_STEPS)}
    paper_weight, paper_bound = schedule_end(PAPER, PAPER_STEPS)
    weight, bound = schedule_end(params, steps)
    assert weight == pytest.approx(paper_weight, rel=1e-6) and bound == pytest.approx(paper_bound, rel=1e-6)
    assert paper_weight == pytest.approx(math.exp(-14.75), rel=1e-6)  # ~4e-7
    assert paper_bound == pytest.approx(float(radius(3e-4, torch.tensor(PAPER_STEPS))), rel=1e-6)
    # and the same shape in between: halfway through the run is the paper's halfway
    assert schedule_end(params, steps // 2)[0] == pytest.approx(
        float(arc_weight(1.0, 5e-4, torch.tensor(PAPER_STEPS * (steps // 2) / steps))), rel=1e-6)


def test_relative_lambda_leaves_the_bound_and_paper_changes_nothing():
    assert schedule_overrides("relative-lambda", 100, PAPER_STEPS) == {
        "schedule_horizon": 100, "schedule_reference_horizon": PAPER_STEPS, "schedule_rescale": "arc_weight"}
    assert schedule_overrides("relative", 100, PAPER_STEPS)["schedule_rescale"] == "both"
    assert schedule_end({**PAPER, **schedule_overrides("relative-lambda", 100, PAPER_STEPS)}, 100)[1] == \
        pytest.approx(math.exp(3e-4 * 100), rel=1e-6)  # the bound keeps the paper's alpha
    assert schedule_overrides("paper", 100, PAPER_STEPS) == {}
    assert schedule_end({}, 1000) == pytest.approx((math.exp(-5e-4 * 1000), math.exp(3e-4 * 1000)), rel=1e-6)  # defaults
    with pytest.raises(ValueError, match="schedule"):
        schedule_overrides("cosine", 100, PAPER_STEPS)
    with pytest.raises(ValueError, match="schedule_horizon must be an integer >= 1"):
        schedule_overrides("relative", 0, PAPER_STEPS)
