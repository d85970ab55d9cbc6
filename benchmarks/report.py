"""Markdown rendering of the benchmark results (``docs/BENCHMARKS.md``)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .arc_loss_memory import ArcLossResult
from .quantizer_throughput import QuantizerResult
from .train_step import TrainStepResult

__all__ = ["render"]

TRAIN_STEP_TARGET, MEMORY_TARGET, TIME_TARGET, THROUGHPUT_TARGET = 1.03, 1 / 8, 1.25, 1.0


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _fraction(ratio: float) -> str:
    """0.125 -> "1/8.0" (a ratio of 0 stays "0")."""
    return f"1/{1 / ratio:.1f}" if ratio > 0 else "0"


def _spread(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    return f"{min(values) * scale:.{digits}f} - {max(values) * scale:.{digits}f}"


def _train_section(results: Sequence[TrainStepResult]) -> list[str]:
    lines = ["## 1. VQGAN train step: ArcQuantizer over taming's VectorQuantizer2", "",
             "| config | images | tokens | steps per arm | VectorQuantizer2 s/step (median; range) "
             "| ArcQuantizer s/step (median; range) | ratio | target <= 1.03 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.seconds
        ratio = s.ratio("ArcQuantizer", "VectorQuantizer2")
        c = r.case
        lines.append(
            f"| {c.name} | {c.batch_size} x {c.resolution} px | {r.tokens} | {len(s.samples['ArcQuantizer'])} "
            f"| {s.median('VectorQuantizer2'):.3f}; {_spread(s.samples['VectorQuantizer2'])} "
            f"| {s.median('ArcQuantizer'):.3f}; {_spread(s.samples['ArcQuantizer'])} "
            f"| {ratio:.3f} | {_verdict(ratio <= TRAIN_STEP_TARGET)} |")
    lines += ["", "The quantisers alone at each config's latent shape (forward + backward, plus the norm-bound "
              "hook for ArcVQ; many interleaved repeats, so far less noisy than whole steps):", "",
              "| config | VectorQuantizer2 ms | ArcQuantizer ms (incl. hook) | difference as a share of "
              "the baseline step | implied step ratio |", "|---|---|---|---|---|"]
    for r in results:
        q = r.quantizer_seconds
        extra = q.median("ArcQuantizer") - q.median("VectorQuantizer2")
        step = r.seconds.median("VectorQuantizer2")
        lines.append(f"| {r.case.name} | {q.median('VectorQuantizer2') * 1e3:.2f} "
                     f"| {q.median('ArcQuantizer') * 1e3:.2f} | {extra / step:+.2%} | {(step + extra) / step:.4f} |")
    return lines


def _memory_section(results: Sequence[ArcLossResult]) -> list[str]:
    lines = ["## 2. ArcLoss forward + backward: chunked over dense", "",
             "| K | N | D | chunk | dense peak | chunked peak | memory ratio (target <= 1/8) "
             "| dense s (median; range) | chunked s (median; range) | time ratio (target <= 1.25) "
             "| one-chunk s (median) | chunked / one-chunk time | max abs grad diff (max abs grad) "
             "| loss dense / chunked |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, p, s = r.case, r.peak_bytes, r.seconds
        mem, time_ratio = p.ratio("chunked", "dense"), s.ratio("chunked", "dense")
        lines.append(
            f"| {c.k} | {c.n} | {c.d} | {c.chunk_size} | {p.median('dense') / 2**20:.0f} MiB "
            f"| {p.median('chunked') / 2**20:.0f} MiB | {_fraction(mem)}: {_verdict(mem <= MEMORY_TARGET)} "
            f"| {s.median('dense'):.2f}; {_spread(s.samples['dense'], digits=2)} "
            f"| {s.median('chunked'):.2f}; {_spread(s.samples['chunked'], digits=2)} "
            f"| {time_ratio:.2f}: {_verdict(time_ratio <= TIME_TARGET)} "
            f"| {s.median('one chunk'):.2f} | {s.ratio('chunked', 'one chunk'):.2f} "
            f"| {r.max_abs_grad_diff:.1e} ({r.max_abs_grad:.1e}) | {r.loss['dense']:.6f} / {r.loss['chunked']:.6f} |")
    return lines


def _throughput_section(results: Sequence[QuantizerResult]) -> list[str]:
    lines = ["## 3. Quantiser forward + backward: ArcQuantizer over vector-quantize-pytorch", ""]
    if not results:
        return lines + ["Not run: vector-quantize-pytorch is not installed "
                        "(`pip install vector-quantize-pytorch`, a benchmark-only dependency)."]
    lines += [             "| K | D | N | ArcQuantizer arc_chunk_size | VectorQuantize latents/s | ArcQuantizer latents/s "
             "| throughput ratio (target >= 1.0) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        c, s = r.case, r.seconds
        ratio = s.ratio("VectorQuantize", "ArcQuantizer")
        lines.append(f"| {c.k} | {c.d} | {c.n} | {c.arc_chunk_size} | {c.n / s.median('VectorQuantize'):,.0f} "
                     f"| {c.n / s.median('ArcQuantizer'):,.0f} | {ratio:.2f}: {_verdict(ratio >= THROUGHPUT_TARGET)} |")
    return lines


def render(machine: Mapping[str, str], command: str, minutes: float,
           train: Sequence[TrainStepResult], memory: Sequence[ArcLossResult],
           throughput: Sequence[QuantizerResult], method: str, vq_version: Optional[str],
           quick: bool = False) -> str:
    """The whole BENCHMARKS.md text (``quick``: toy sizes, marked as such)."""
    lines = ["# ArcVQ benchmarks", ""]
    if quick:
        lines += ["**Toy sizes (`--quick`): a smoke run; these figures say nothing about the targets.**", ""]
    lines += [
             "Written by `python -m benchmarks` (do not edit by hand; rerun it). Every figure is a ratio "
             "of two arms measured side by side in the same run, repeats interleaved, median.", "",
             "## Machine and command", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += [f"| vector-quantize-pytorch | {vq_version or 'not installed'} |",
              f"| command | `{command}` |", f"| total run time | {minutes:.1f} min |", ""]
    lines += _train_section(train) + [""] + _memory_section(memory) + [""] + _throughput_section(throughput)
    lines += ["", method.strip(), ""]
    return "\n".join(lines)
