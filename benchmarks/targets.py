"""The performance targets, checked against a run's results: on the CPU its train-step target and
the targets every device shares; on a GPU the GPU targets, then the shared ones.

Each check gives the figure(s) it read and a verdict: ``met``, ``MISSED`` (any figure misses), or
``not measured`` (no run on that device yet, the sizes were not in the run, or a figure could not
be taken, e.g. the dense arm it divides by ran out of memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from .arc_loss_memory import ArcLossResult
from .quantizers import QuantizerResult
from .train_step import TrainStepResult

__all__ = ["EXTRA_MEMORY_LIMIT_GIB", "GIB", "MEMORY_RATIO_LIMIT", "MET", "MISSED", "NOT_MEASURED", "THROUGHPUT_MIN",
           "TIME_RATIO_LIMIT", "TRAIN_STEP_LIMIT", "TargetCheck", "check_targets", "fraction"]

MET, MISSED, NOT_MEASURED = "met", "MISSED", "not measured"
GIB = 2 ** 30
ARC, ARC_CHUNKED, VQ_COSINE = "ArcQuantizer", "ArcQuantizer chunked", "VectorQuantize"
GRADIENT_RTOL = 1e-4
"""Dense and chunked ArcLoss gradients count as equal when max |diff| <= GRADIENT_RTOL * max |grad|
(float32 rounding of differently ordered sums; observed ~1e-7)."""

TRAIN_STEP_LIMIT = {"cpu": 1.03, "cuda": 1.02}
"""The most a VQGAN train step with ArcQuantizer may take, as a ratio over VectorQuantizer2's, per device."""
MEMORY_RATIO_LIMIT, TIME_RATIO_LIMIT, THROUGHPUT_MIN, EXTRA_MEMORY_LIMIT_GIB = 1 / 8, 1.25, 1.0, 4.0
MEMORY_TARGET = f"<= 1/{round(1 / MEMORY_RATIO_LIMIT)}"


@dataclass(frozen=True)
class TargetCheck:
    """One target and how a run fared: what it measures, the target, the figure(s) read and the verdict."""

    what: str
    target: str
    figure: str
    verdict: str


# one figure: (label, value text, ok); ok None = could not be measured
Figure = tuple[str, str, Optional[bool]]


def fraction(ratio: float) -> str:
    """0.125 -> "1/8.0" (a ratio of 0 stays "0")."""
    return f"1/{1 / ratio:.1f}" if ratio > 0 else "0"


def _check(what: str, target: str, figures: Sequence[Figure], absent: str) -> TargetCheck:
    if not figures:
        return TargetCheck(what, target, absent, NOT_MEASURED)
    text = "; ".join(f"{label}: {value}" if label else value for label, value, _ in figures)
    oks = [ok for _, _, ok in figures]
    verdict = MISSED if False in oks else NOT_MEASURED if None in oks else MET
    return TargetCheck(what, target, text, verdict)


def _train_figures(results: Iterable[TrainStepResult], limit: float) -> list[Figure]:
    figures = []
    for r in results:
        if r.failure:
            figures.append((r.case.name, r.failure, None))
        elif r.seconds.has(ARC) and r.seconds.has(r.case.baseline):
            ratio = r.seconds.ratio(ARC, r.case.baseline)
            figures.append((r.case.name, f"{ratio:.3f}", ratio <= limit))
    return figures


def _arc_loss_figures(results: Iterable[ArcLossResult], what: str) -> list[Figure]:
    figures = []
    for r in results:
        c = r.case
        if (c.k, c.n) != (16384, 32768):
            continue
        label = f"D={c.d}"
        if what == "gradient":
            if r.max_abs_grad_diff is None:
                figures.append((label, "dense or chunked did not run", None))
            else:
                ok = r.max_abs_grad_diff <= GRADIENT_RTOL * r.max_abs_grad
                figures.append((label, f"{r.max_abs_grad_diff:.1e} (max abs grad {r.max_abs_grad:.1e})", ok))
            continue
        comparison = r.peak_bytes if what == "memory" else r.seconds
        if not (comparison.has("dense") and comparison.has("chunked")):
            missing = "; ".join(f"{arm} {comparison.failures.get(arm, 'not measured')}"
                                for arm in ("dense", "chunked") if not comparison.has(arm))
            figures.append((label, missing, None))
            continue
        ratio = comparison.ratio("chunked", "dense")
        if what == "memory":
            figures.append((label, fraction(ratio), ratio <= MEMORY_RATIO_LIMIT))
        else:
            figures.append((label, f"{ratio:.2f}", ratio <= TIME_RATIO_LIMIT))
    return figures


def _quantizer_figures(results: Iterable[QuantizerResult], keep: Callable[[QuantizerResult], bool],
                       figure: Callable[[QuantizerResult], Optional[Figure]]) -> list[Figure]:
    return [f for f in (figure(r) for r in results if keep(r)) if f is not None]


def _label(r: QuantizerResult) -> str:
    return f"K={r.case.k}, D={r.case.d}, {r.dtype}"


def _throughput(r: QuantizerResult) -> Figure:
    s = r.seconds
    if not (s.has(ARC) and s.has(VQ_COSINE)):
        arm = ARC if not s.has(ARC) else VQ_COSINE
        return _label(r), f"{arm}: {s.failures.get(arm, 'not run')}", None
    ratio = s.ratio(VQ_COSINE, ARC)
    return _label(r), f"{ratio:.2f}", ratio >= THROUGHPUT_MIN


def _chunked_memory_ratio(r: QuantizerResult) -> Optional[Figure]:
    if ARC_CHUNKED in r.seconds.failures:
        return _label(r), r.seconds.failures[ARC_CHUNKED], False
    if ARC_CHUNKED not in r.peak_bytes:
        return None  # no memory figures on this device
    if ARC not in r.peak_bytes:
        return _label(r), f"dense: {r.seconds.failures.get(ARC, 'not measured')}", None
    ratio = r.peak_bytes[ARC_CHUNKED] / r.peak_bytes[ARC]
    return _label(r), fraction(ratio), ratio <= MEMORY_RATIO_LIMIT


def _chunked_extra_memory(r: QuantizerResult) -> Optional[Figure]:
    if ARC_CHUNKED in r.seconds.failures:
        return _label(r), r.seconds.failures[ARC_CHUNKED], False
    if ARC_CHUNKED not in r.peak_bytes:
        return None
    gib = r.peak_bytes[ARC_CHUNKED] / GIB
    return _label(r), f"{gib:.2f} GiB", gib < EXTRA_MEMORY_LIMIT_GIB


def _bf16_finite(r: QuantizerResult) -> Figure:
    ran = [arm for arm in (ARC, ARC_CHUNKED) if arm in r.finite]
    if not ran:
        return f"K={r.case.k}, D={r.case.d}", "ArcQuantizer did not run", None
    bad = [arm for arm in ran if not r.finite[arm]]
    return f"K={r.case.k}, D={r.case.d}", "not finite: " + ", ".join(bad) if bad else "finite", not bad


def check_targets(device: str, train: Sequence[TrainStepResult], arc_loss: Sequence[ArcLossResult],
                  quantizers: Sequence[QuantizerResult], measured: bool = True) -> list[TargetCheck]:
    """Every target of ``device`` against the results (``measured=False``: no run on that device
    yet): on the CPU its train-step target, then the shared targets; on a GPU the GPU targets, then
    the shared ones."""
    absent = "not in this run's sizes" if measured else "-"
    large = [r for r in quantizers if (r.case.k, r.case.n) == (16384, 32768)]
    huge = [r for r in quantizers if (r.case.k, r.case.n) == (100000, 32768)]
    step = TRAIN_STEP_LIMIT[device]
    shared = [
        _check("ArcLoss peak memory, chunked / dense (K=16384, N=32768)", MEMORY_TARGET,
               _arc_loss_figures(arc_loss, "memory"), absent),
        _check("ArcLoss time, chunked / dense (same)", f"<= {TIME_RATIO_LIMIT}",
               _arc_loss_figures(arc_loss, "time"), absent),
        _check("ArcLoss gradient, chunked vs dense (same)",
               f"equal (max abs diff <= {GRADIENT_RTOL:g} x max abs grad)", _arc_loss_figures(arc_loss, "gradient"),
               absent),
        _check("Quantiser throughput, ArcQuantizer / vector-quantize-pytorch cosine VectorQuantize",
               f">= {THROUGHPUT_MIN}", _quantizer_figures(quantizers, lambda r: r.dtype == "fp32", _throughput),
               absent),
    ]
    if device == "cpu":
        return [_check("VQGAN train step time, ArcQuantizer / VectorQuantizer2", f"<= {step}",
                       _train_figures(train, step), absent)] + shared
    return [
        _check("f8 VQGAN train step time, ArcQuantizer / VectorQuantizer2", f"<= {step}",
               _train_figures(train, step), absent),
        _check("ArcQuantizer peak memory, chunked / dense (K=16384, N=32768)", MEMORY_TARGET,
               _quantizer_figures(large, lambda r: r.dtype == "fp32", _chunked_memory_ratio), absent),
        _check("ArcQuantizer chunked at K=100000, N=32768: memory above its inputs",
               f"< {EXTRA_MEMORY_LIMIT_GIB:g} GiB", _quantizer_figures(huge, lambda r: True, _chunked_extra_memory),
               absent),
        _check("bf16 autocast: ArcQuantizer (dense, chunked) output, loss, gradient", "finite",
               _quantizer_figures(quantizers, lambda r: r.dtype == "bf16", _bf16_finite), absent),
    ] + shared
