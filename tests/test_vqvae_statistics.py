"""Seed statistics of arcvq-reproduce against hand computations, and the tables built from them."""
import math

import pytest

from arcvq_plugin.vqvae.report import build_table, format_table
from arcvq_plugin.vqvae.statistics import paired_difference, seed_summary, t_quantile

# Student's t, two-sided 95% (the 0.975 quantile), from a printed table.
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(df) == pytest.approx(T_TABLE[df], abs=5e-5)


def test_seed_summary_is_mean_and_sample_std():
    s = seed_summary([21.2, 21.5, 21.0])
    assert s["mean"] == pytest.approx(63.7 / 3) and s["n"] == 3
    # by hand: deviations 21.2 - 21.2333 = -0.0333, 0.2667, -0.2333 -> sum of squares 0.12667 / 2
    assert s["std"] == pytest.approx(math.sqrt(0.126667 / 2), rel=1e-4)
    assert seed_summary([3.0]) == {"mean": 3.0, "std": None, "n": 1}
    assert seed_summary([1.0, None])["mean"] is None


def test_paired_difference_three_seeds_by_hand():
    # differences 0.2, 0.3, 0.1: mean 0.2, std 0.1, half-width 4.3027 * 0.1 / sqrt(3) = 0.24841
    d = paired_difference({1: 21.2, 2: 21.5, 3: 21.0}, {1: 21.0, 2: 21.2, 3: 20.9})
    assert d["differences"] == pytest.approx([0.2, 0.3, 0.1]) and d["seeds"] == [1, 2, 3]
    assert d["mean"] == pytest.approx(0.2) and d["std"] == pytest.approx(0.1)
    assert d["interval"] == pytest.approx([0.2 - 0.24841, 0.2 + 0.24841], abs=1e-4)
    assert d["resolved"] is False and d["note"] is None
    shifted = paired_difference({1: 2.0, 2: 2.2, 3: 2.1}, {1: 1.0, 2: 1.0, 3: 1.0})  # 1.0, 1.2, 1.1
    assert shifted["interval"] == pytest.approx([1.1 - 0.24841, 1.1 + 0.24841], abs=1e-4)
    assert shifted["resolved"] is True
    below = paired_difference({1: 1.0, 2: 1.0, 3: 1.0}, {1: 2.0, 2: 2.2, 3: 2.1})
    assert below["resolved"] is True and below["interval"][1] < 0


def test_paired_difference_uses_only_common_seeds_and_says_when_weak():
    two = paired_difference({1: 1.2, 2: 1.4, 3: 9.0}, {1: 1.0, 2: 1.0})  # seed 3 is not paired
    # differences 0.2, 0.4: mean 0.3, std 0.14142, half-width 12.7062 * 0.14142 / sqrt(2) = 1.27062
    assert two["seeds"] == [1, 2] and two["interval"] == pytest.approx([0.3 - 1.27062, 0.3 + 1.27062], abs=1e-4)
    assert two["resolved"] is False and "fewer than 3 seeds" in two["note"]
    one = paired_difference({1: 2.0}, {1: 1.0})
    assert one["mean"] == 1.0 and one["interval"] is None and one["resolved"] is None and "1 seed" in one["note"]
    assert paired_difference({1: 2.0}, {2: 1.0}) is None
    assert paired_difference({1: None}, {1: 1.0}) is None


def _metrics(psnr, ssim, usage):
    return {"psnr": psnr, "ssim": ssim, "lpips": None, "rfid": None, "usage": usage, "used_codes": usage * 512,
            "perplexity": 10.0, "dead_codes": 0, "mean_code_norm": 1.0, "clipped_last": None,
            "train_seconds": 1.0, "train_cpu_seconds": 1.0}


def test_table_reports_mean_std_and_differences_against_the_reference():
    rows = {
        "vq": {"label": "VQ-VAE", "seeds": {1: _metrics(18.0, 0.80, 0.02), 2: _metrics(18.4, 0.82, 0.03),
                                             3: _metrics(18.2, 0.81, 0.02)}},
        "arcvq": {"label": "ArcVQ-VAE", "seeds": {1: _metrics(21.0, 0.90, 0.80), 2: _metrics(21.5, 0.92, 0.82),
                                                   3: _metrics(21.1, 0.91, 0.79)}},
    }
    table = build_table("ablation", "test", "arcvq", rows)
    assert set(table["differences"]) == {"vq"}
    psnr = table["differences"]["vq"]["psnr"]
    assert psnr["differences"] == pytest.approx([3.0, 3.1, 2.9]) and psnr["resolved"] is True
    assert table["rows"]["arcvq"]["summary"]["psnr"]["std"] == pytest.approx(seed_summary([21.0, 21.5, 21.1])["std"])
    text = format_table(table, "mnist")
    assert "| ArcVQ-VAE | 3 | 21.20 ± 0.26 |" in text
    assert "| VQ-VAE | +3.00 [+2.75, +3.25] |" in text and "PSNR: yes" in text
    assert "28.01" in text  # the paper's number beside
    with pytest.raises(ValueError, match="reference"):
        build_table("ablation", "test", "cosine", rows)
