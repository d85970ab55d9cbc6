import math

import pytest
import torch

from arcvq_plugin.schedules import arc_weight, log_radius, radius

import formulas


@pytest.mark.parametrize("t", [0, 1, 17, 3000, 250_000])
@pytest.mark.parametrize("alpha", [0.0, 1e-5, 3e-4])
def test_radius_matches_formula(alpha, t):
    clock = torch.tensor(t)
    assert radius(alpha, clock).item() == pytest.approx(math.exp(alpha * t), rel=1e-6)
    assert log_radius(alpha, clock).item() == pytest.approx(alpha * t, rel=1e-12)


@pytest.mark.parametrize("t", [0, 1, 17, 3000, 250_000])
@pytest.mark.parametrize("gamma,delta", [(1.0, 5e-4), (0.5, 1e-4), (2.0, 0.0)])
def test_arc_weight_matches_formula(gamma, delta, t):
    got = arc_weight(gamma, delta, torch.tensor(t)).item()
    assert got == pytest.approx(formulas.arc_weight(gamma, delta, t), rel=1e-6, abs=1e-30)


def test_no_overflow_at_ten_million_steps():
    clock = torch.tensor(10_000_000)
    r = radius(5e-5, clock)
    assert torch.isfinite(r) and r.dtype == torch.float32 and r.item() == torch.finfo(torch.float32).max
    assert arc_weight(1.0, 1e-4, clock).item() == 0.0
    assert log_radius(5e-5, clock).item() == pytest.approx(500.0)


def test_clock_is_exact_beyond_float32_integers():
    big = 2**24 + 1  # not representable in float32
    assert log_radius(1.0, torch.tensor(big)).item() == big
