"""ArcQuantizer's schedule horizon: the rescaled schedules in float64 closed form, None unchanged,
the clock origin of a converted codebook, the state_dict (resume), and bad values."""
from __future__ import annotations

import math
import random

import pytest
import torch

from arcvq_plugin import ArcQuantizer
from arcvq_plugin.norm_bound import clip_rows_to_radius_
from arcvq_plugin.schedules import arc_weight, effective_rates, log_radius, radius

AUTO_PARAMS = {"schedule_horizon": "auto", "schedule_reference_horizon": 29_500}


def make(**kwargs) -> ArcQuantizer:
    torch.manual_seed(0)
    return ArcQuantizer(6, 3, **kwargs)


def start_run_at(q: ArcQuantizer, origin: int) -> None:
    """The horizon's run starts with the clock at ``origin`` (a converted or fine-tuned codebook)."""
    q.clock.fill_(origin)
    q.after_optimizer_step()  # the first optimizer step of the run fixes the origin


def closed_form(gamma, alpha, delta, horizon, reference, rescale, origin, clock) -> tuple[float, float]:
    """(lambda(t), R(t)) in float64 from the definitions, independently of the package."""
    factor = reference / horizon
    alpha_run = alpha * factor if rescale == "both" else alpha
    delta_run = delta * factor
    lam = gamma * math.exp(-(delta * origin + delta_run * (clock - origin)))
    bound = math.exp(alpha * origin + alpha_run * (clock - origin))
    return lam, bound


@pytest.mark.parametrize("rescale", ["arc_weight", "both"])
def test_schedules_match_the_closed_form_for_random_horizons_rates_and_clocks(rescale):
    rng = random.Random(20)
    for _ in range(40):
        horizon, reference = rng.randint(1, 20_000), rng.randint(1, 700_000)
        alpha, delta, gamma = rng.uniform(0, 1e-3), rng.uniform(0, 1e-3), rng.uniform(0.1, 2.0)
        origin = rng.choice([0, rng.randint(0, 50_000)])
        q = make(bbnr_alpha=alpha, arc_gamma_decay=delta, arc_gamma=gamma, schedule_horizon=horizon,
                 schedule_reference_horizon=reference, schedule_rescale=rescale)
        start_run_at(q, origin)
        assert (q.effective_bbnr_alpha, q.effective_arc_gamma_decay) == pytest.approx(
            ((alpha * reference / horizon) if rescale == "both" else alpha, delta * reference / horizon), rel=1e-12)
        for clock in [origin + 1, origin + rng.randint(1, horizon), origin + horizon]:
            q.clock.fill_(clock)
            lam, bound = closed_form(gamma, alpha, delta, horizon, reference, rescale, origin, clock)
            if math.log(bound) > 80:  # float32 display saturates; the log bound is what clips
                continue
            assert float(q.arc_weight) == pytest.approx(lam, rel=2e-6, abs=1e-38)
            assert float(q.radius) == pytest.approx(bound, rel=2e-6)
        # at the end of the run lambda and R are what the configured rates reached at T_ref
        q.clock.fill_(origin + horizon)
        assert float(q.arc_weight) == pytest.approx(gamma * math.exp(-delta * (origin + reference)), rel=2e-6, abs=1e-38)


@pytest.mark.parametrize("rescale", ["arc_weight", "both"])
def test_the_norm_bound_clips_to_the_rescaled_radius(rescale):
    q = make(bbnr_alpha=2e-4, arc_gamma_decay=5e-4, schedule_horizon=300, schedule_reference_horizon=29_500,
             schedule_rescale=rescale)
    for _ in range(149):
        q.after_optimizer_step()
    with torch.no_grad():
        q.embedding.weight.mul_(1e6)  # every code far outside the ball before the 150th step
    q.after_optimizer_step()
    _, bound = closed_form(1.0, 2e-4, 5e-4, 300, 29_500, rescale, 0, 150)
    norms = q.embedding.weight.detach().double().norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, bound), rtol=1e-5, atol=0)


def test_none_is_the_papers_schedule_bit_for_bit():
    alpha, delta, gamma = 3e-4, 5e-4, 0.7
    q = make(bbnr_alpha=alpha, arc_gamma_decay=delta, arc_gamma=gamma)
    with_reference = make(bbnr_alpha=alpha, arc_gamma_decay=delta, arc_gamma=gamma, schedule_reference_horizon=29_500)
    assert set(q.state_dict()) == {"embedding.weight", "clock"}  # no horizon state
    assert "schedule_horizon" not in q.extra_repr()
    with torch.no_grad():
        q.embedding.weight.mul_(50.0)
    expected = q.embedding.weight.detach().clone()
    for step in range(1, 400):
        q.after_optimizer_step()
        with_reference.after_optimizer_step()
        clip_rows_to_radius_(expected, log_radius(alpha, torch.tensor(step)))
        assert torch.equal(q.radius, radius(alpha, q.clock)) and torch.equal(q.arc_weight, arc_weight(gamma, delta, q.clock))
        assert torch.equal(with_reference.arc_weight, q.arc_weight) and torch.equal(with_reference.radius, q.radius)
    assert torch.equal(q.embedding.weight, expected)
    q.train()(torch.randn(2, 3, 4, 4))
    assert set(q.loss_breakdown) == {"vq", "arc", "arc_weight", "radius", "perplexity", "usage"}


def test_a_horizon_equal_to_the_reference_gives_the_papers_values():
    paper = make()
    fitted = make(schedule_horizon=29_500, schedule_reference_horizon=29_500, schedule_rescale="both")
    for q in (paper, fitted):
        q.clock.fill_(12_345)
    torch.testing.assert_close(fitted.arc_weight, paper.arc_weight, rtol=1e-7, atol=0)
    torch.testing.assert_close(fitted.radius, paper.radius, rtol=1e-7, atol=0)


def test_a_converted_clock_offset_is_outside_the_horizon():
    """arcvq-convert starts the clock at t0 where R(t0) covers the largest code norm: R(t0) and
    lambda(t0) stay what it wrote, and the run's T steps use the rescaled rates."""
    alpha, delta, t0, horizon, reference = 1e-5, 1e-4, 160_000, 2_000, 640_590
    converted = make(bbnr_alpha=alpha, arc_gamma_decay=delta)
    converted.clock.fill_(t0)
    with torch.no_grad():
        converted.embedding.weight.copy_(converted.embedding.weight / converted.embedding.weight.norm(dim=1, keepdim=True)
                                         * 0.999 * math.exp(alpha * t0))
    state = converted.state_dict()
    q = make(bbnr_alpha=alpha, arc_gamma_decay=delta, schedule_horizon=horizon,
             schedule_reference_horizon=reference, schedule_rescale="both")
    q.load_state_dict(state)  # strict: a checkpoint without horizon state loads
    assert float(q.radius) == pytest.approx(math.exp(alpha * t0), rel=1e-6)
    assert float(q.arc_weight) == pytest.approx(math.exp(-delta * t0), rel=1e-6)
    codes = q.embedding.weight.detach().clone()
    q.after_optimizer_step()
    assert torch.equal(q.embedding.weight, codes)  # R only grows from t0: the first step clips nothing
    assert int(q.schedule_origin) == t0
    q.clock.fill_(t0 + horizon)
    assert float(q.radius) == pytest.approx(math.exp(alpha * t0 + alpha * reference), rel=1e-5)
    assert float(q.arc_weight) == pytest.approx(math.exp(-delta * t0 - delta * reference), rel=1e-5, abs=1e-38)


def test_resume_keeps_the_resolved_horizon_origin_and_rates():
    trained = make(schedule_horizon="auto", schedule_reference_horizon=29_500)
    trained.resolve_schedule_horizon(700)
    start_run_at(trained, 5)
    for _ in range(40):
        trained.after_optimizer_step()
    state = trained.state_dict()
    assert int(state["schedule_horizon_steps"]) == 700 and int(state["schedule_origin"]) == 5
    torch.testing.assert_close(state["effective_rates"], torch.tensor([3e-4, 5e-4 * 29_500 / 700]))

    resumed = make(schedule_horizon="auto", schedule_reference_horizon=29_500)
    resumed.resolve_schedule_horizon(900)  # the run's length as a changed Trainer would compute it
    resumed.load_state_dict(state)
    assert resumed.resolved_schedule_horizon == 700
    assert torch.equal(resumed.arc_weight, trained.arc_weight) and torch.equal(resumed.radius, trained.radius)
    for q in (trained, resumed):
        q.after_optimizer_step()
    assert torch.equal(resumed.embedding.weight, trained.embedding.weight) and torch.equal(resumed.arc_weight, trained.arc_weight)

    explicit = make(schedule_horizon=900, schedule_reference_horizon=29_500)
    explicit.load_state_dict(state)  # an explicit horizon is the config's; the origin is the checkpoint's
    assert explicit.resolved_schedule_horizon == 900 and int(explicit.schedule_origin) == 5
    assert float(explicit.effective_rates[1]) == pytest.approx(5e-4 * 29_500 / 900)
    paper = make()
    paper.load_state_dict(state)  # strict: the paper's schedule ignores horizon state
    assert set(paper.state_dict()) == {"embedding.weight", "clock"}


def test_effective_rates_are_in_extra_repr_and_the_loss_breakdown():
    q = make(schedule_horizon=250, schedule_reference_horizon=29_500, schedule_rescale="arc_weight")
    text = q.extra_repr()
    assert "schedule_horizon=250" in text and "effective arc_gamma_decay=0.059" in text and "effective bbnr_alpha=0.0003" in text
    q.train()(torch.randn(2, 3, 4, 4))
    assert float(q.loss_breakdown["arc_gamma_decay"]) == pytest.approx(5e-4 * 118)
    assert float(q.loss_breakdown["bbnr_alpha"]) == pytest.approx(3e-4)
    auto = make(schedule_horizon="auto", schedule_reference_horizon=29_500)
    assert "unresolved" in auto.extra_repr()
    auto.eval()(torch.randn(2, 3, 4, 4))  # evaluation works before the horizon is known
    assert "arc_weight" not in auto.loss_breakdown
    with pytest.raises(RuntimeError, match="resolve_schedule_horizon"):
        auto.train()(torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="not resolved"):
        auto.after_optimizer_step()


def test_effective_rates_formula():
    assert effective_rates(3e-4, 5e-4, 250, 29_500, "arc_weight") == (3e-4, pytest.approx(5e-4 * 118))
    assert effective_rates(3e-4, 5e-4, 59_000, 29_500, "both") == (pytest.approx(1.5e-4), pytest.approx(2.5e-4))


@pytest.mark.parametrize("kwargs,message", [
    ({"schedule_horizon": 0, "schedule_reference_horizon": 10}, "schedule_horizon must be None, 'auto' or an integer >= 1"),
    ({"schedule_horizon": 2.5, "schedule_reference_horizon": 10}, "schedule_horizon must be None, 'auto' or an integer >= 1"),
    ({"schedule_horizon": True, "schedule_reference_horizon": 10}, "got True"),
    ({"schedule_horizon": "Auto", "schedule_reference_horizon": 10}, "got 'Auto'"),
    ({"schedule_horizon": 100}, "schedule_reference_horizon must be an integer >= 1 when schedule_horizon is set"),
    ({"schedule_horizon": "auto", "schedule_reference_horizon": 0}, "schedule_reference_horizon must be an integer >= 1, got 0"),
    ({"schedule_reference_horizon": 1.5}, "schedule_reference_horizon must be an integer >= 1, got 1.5"),
    ({"schedule_rescale": "lambda"}, "schedule_rescale must be one of ('arc_weight', 'both'), got 'lambda'"),
])
def test_bad_values_are_refused_with_the_parameter_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(**kwargs)


def test_resolving_needs_a_horizon_and_a_positive_length():
    with pytest.raises(ValueError, match="schedule_horizon is None"):
        make().resolve_schedule_horizon(10)
    with pytest.raises(ValueError, match="schedule_horizon must be an integer >= 1, got 0"):
        make(schedule_horizon="auto", schedule_reference_horizon=10).resolve_schedule_horizon(0)


def test_inference_loads_checkpoints_with_or_without_horizon_state():
    from arcvq_plugin.inference import build_inference_model

    node = {"target": "arcvq_plugin.ArcQuantizer", "params": {"n_e": 6, "e_dim": 3}}
    with_horizon = {**node, "params": {**node["params"], **AUTO_PARAMS}}
    trained = make(**AUTO_PARAMS)
    trained.resolve_schedule_horizon(100)
    plain = make().state_dict()
    loaded = build_inference_model(node, trained.state_dict())  # strict: the horizon state is not weights
    assert torch.equal(loaded.embedding.weight, trained.embedding.weight)
    assert build_inference_model(with_horizon, plain).resolved_schedule_horizon is None
    assert build_inference_model(with_horizon, trained.state_dict()).resolved_schedule_horizon == 100

