"""Seed statistics of the ablation: mean +- standard deviation per row, paired differences with t-intervals.

Every training of a table runs once per seed, and rows trained with the same seed share the
initialisation seed and the data order (``DeviceDataModule`` shuffles with ``seed + epoch``). A
difference between two rows is therefore measured per seed,

    d_s = metric(reference row, seed s) - metric(other row, seed s),

and summarised by its mean, its sample standard deviation (ddof 1) and the 95% t-interval
``mean +- t(0.975, n - 1) * std / sqrt(n)`` over the n seeds both rows have. A difference is
*resolved* at the measured budget when that interval excludes 0. With one seed there is no
interval; with two the interval rests on one degree of freedom (t = 12.71) and is labelled as
coming from fewer than 3 seeds.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from scipy.stats import t as student_t

from arcvq_plugin.validation import check_int, check_real

__all__ = ["CONFIDENCE", "MIN_SEEDS_FOR_INTERVAL_NOTE", "mean_std", "paired_difference", "seed_summary", "t_quantile"]

CONFIDENCE = 0.95
MIN_SEEDS_FOR_INTERVAL_NOTE = 3


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided quantile ``t((1 + confidence) / 2, df)`` of Student's t (df >= 1)."""
    check_int("df", df, minimum=1)
    check_real("confidence", confidence, minimum=0.0, exclusive=True, below=1.0)
    return float(student_t.ppf(0.5 + confidence / 2.0, df))


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """``(mean, sample std (ddof 1))`` of n >= 1 values, summed exactly (``math.fsum``); std is None for n = 1."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def seed_summary(values: Sequence[Optional[float]]) -> dict:
    """``{"mean", "std", "n"}`` of one metric over seeds; std is the sample std (ddof 1), None for n = 1.

    A metric missing (None) in any seed gives ``{"mean": None, "std": None, "n": n}``.
    """
    if not values:
        raise ValueError("values must hold at least one seed's value")
    if any(v is None for v in values):
        return {"mean": None, "std": None, "n": len(values)}
    mean, std = mean_std([float(v) for v in values])
    return {"mean": mean, "std": std, "n": len(values)}


def paired_difference(reference: Mapping[int, Optional[float]], other: Mapping[int, Optional[float]],
                      confidence: float = CONFIDENCE) -> Optional[dict]:
    """Per-seed differences ``reference[s] - other[s]`` over the seeds both have, and their t-interval.

    Returns None when no common seed has both values, else::

        {"seeds": [...], "differences": [...], "n", "mean", "std" (None for n = 1),
         "interval": [low, high] (None for n = 1), "t": t quantile (None for n = 1),
         "resolved": the interval excludes 0 (None for n = 1),
         "note": why the interval is missing or weak (n < 3), else None}
    """
    seeds = sorted(s for s in set(reference) & set(other) if reference[s] is not None and other[s] is not None)
    if not seeds:
        return None
    differences = [float(reference[s]) - float(other[s]) for s in seeds]
    n = len(differences)
    mean, std = mean_std(differences)
    result = {"seeds": seeds, "differences": differences, "n": n, "mean": mean, "std": std,
              "interval": None, "t": None, "resolved": None, "note": None}
    if n == 1:
        result["note"] = "1 seed: no interval"
        return result
    t = t_quantile(n - 1, confidence)
    half = t * std / math.sqrt(n)
    result.update(interval=[mean - half, mean + half], t=t, resolved=bool(mean - half > 0.0 or mean + half < 0.0))
    if n < MIN_SEEDS_FOR_INTERVAL_NOTE:
        result["note"] = f"fewer than {MIN_SEEDS_FOR_INTERVAL_NOTE} seeds: t-interval with {n - 1} degree(s) of freedom"
    return result
