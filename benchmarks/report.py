"""Markdown of one device's benchmark results: the section :mod:`benchmarks.document` places
under that device's heading in ``docs/BENCHMARKS.md``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from arcvq_plugin.markdown import markdown_table

from .arc_loss_memory import ArcLossResult
from .devices import DEVICES, NOT_MEASURED_MARK
from .measure import Comparison
from .plans import Plan, plan_for
from .quantizers import ARMS as QUANTIZER_ARMS
from .quantizers import QuantizerResult
from .targets import (MEMORY_RATIO_LIMIT, MEMORY_TARGET, MET, THROUGHPUT_MIN, TIME_RATIO_LIMIT, TRAIN_STEP_LIMIT,
                      TargetCheck, check_targets, fraction)
from .train_step import TrainStepResult

__all__ = ["DeviceRun", "MEASURE_COMMANDS", "not_measured_section", "not_measured_sections", "render_section"]

MEASURE_COMMANDS = {
    "cpu": "`python -m benchmarks --device cpu`",
    "cuda": "`bash scripts/gpu_benchmarks.sh` on any CUDA machine (this section and the MNIST ablation at the "
            "paper's budget, within 10 minutes; its header says how to run it where PyPI cannot be reached), "
            "or `python -m benchmarks --device cuda` (this section only)",
}
"""How to measure each device (markdown), as the section of a device not measured yet says."""


@dataclass
class DeviceRun:
    """Everything one ``python -m benchmarks --device ...`` run measured."""

    plan: Plan
    machine: Mapping[str, Any]
    command: str
    minutes: float
    vq_version: Optional[str]
    train: Sequence[TrainStepResult]
    arc_loss: Sequence[ArcLossResult]
    quantizers: Sequence[QuantizerResult]


def _verdict(ok: bool) -> str:
    return MET if ok else "MISSED"


def _spread(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    return f"{min(values) * scale:.{digits}f} - {max(values) * scale:.{digits}f}"


def _memory(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.0f} MiB"


def _arm_time(s: Comparison, arm: str, scale: float = 1.0, digits: int = 3) -> str:
    """``median; min - max`` of an arm, or why it has no figure."""
    if arm in s.failures:
        return s.failures[arm]
    if not s.samples.get(arm):
        return "not run"
    return f"{s.median(arm) * scale:.{digits}f}; {_spread(s.samples[arm], scale, digits)}"


def _targets_section(checks: Sequence[TargetCheck]) -> list[str]:
    return markdown_table(["what", "target", "figure", "verdict"],
                          [[c.what, c.target, c.figure, c.verdict] for c in checks])


def _train_section(device: str, results: Sequence[TrainStepResult]) -> list[str]:
    limit = TRAIN_STEP_LIMIT[device]
    lines = ["### 1. VQGAN train step", "",
             "Each arm's `training_step` run by a Lightning Trainer on one fixed batch; the first arm is the "
             "baseline of the ratios.", ""]
    rows = []
    for r in results:
        c = r.case
        if r.failure:
            rows.append([c.name, "all", f"up to {c.batch_size} x {c.resolution} px", "-", "-", r.failure, "-", "-"])
            continue
        images = f"{r.batch_size} x {c.resolution} px"
        if r.batches_out_of_memory:
            images += f" (out of memory at {', '.join(map(str, r.batches_out_of_memory))})"
        for arm in c.arms:
            s = r.seconds
            if arm.name == c.baseline:
                ratio, verdict = "baseline", "-"
            elif s.has(arm.name) and s.has(c.baseline):
                value = s.ratio(arm.name, c.baseline)
                ratio, verdict = f"{value:.3f}", _verdict(value <= limit) if c.target else "(no target)"
            else:
                ratio, verdict = "-", "not measured"
            rows.append([c.name, arm.name, images, str(r.tokens), str(len(s.samples[arm.name])),
                         _arm_time(s, arm.name), ratio, verdict])
    lines += markdown_table(["config", "arm", "images", "tokens", "steps", "s/step (median; range)",
                             "ratio over the baseline", f"target <= {limit}"], rows)
    lines += ["", "The quantisers alone at each config's latent shape (forward + backward, plus the norm-bound "
              "hook for ArcVQ; many interleaved repeats, so far less noisy than whole steps):", ""]
    rows = []
    for r in results:
        q, c = r.quantizer_seconds, r.case
        if r.failure or not c.target or not q.has(c.baseline) or not r.seconds.has(c.baseline):
            continue
        step = r.seconds.median(c.baseline)
        for arm in q.samples:
            if not q.has(arm):
                rows.append([c.name, arm, q.failures.get(arm, "not run"), "-", "-"])
                continue
            extra = q.median(arm) - q.median(c.baseline)
            rows.append([c.name, arm, f"{q.median(arm) * 1e3:.2f}", f"{extra / step:+.2%}",
                         f"{(step + extra) / step:.4f}"])
    return lines + markdown_table(["config", "quantiser (of arm)", "ms (median)",
                                   "difference over the baseline's, as a share of its step", "implied step ratio"],
                                  rows)


def _peak(p: Comparison, arm: str) -> str:
    if arm in p.failures:
        return p.failures[arm]
    return _memory(p.median(arm)) if p.samples.get(arm) else "-"


def _arc_loss_section(results: Sequence[ArcLossResult]) -> list[str]:
    header = ["K", "N", "D", "chunk", "dense peak", "chunked peak", "one-chunk peak",
              f"memory ratio (target {MEMORY_TARGET})", "dense s (median; range)", "chunked s (median; range)",
              f"time ratio (target <= {TIME_RATIO_LIMIT})", "one-chunk s (median)", "chunked / one-chunk time",
              "max abs grad diff (max abs grad)", "loss dense / chunked"]
    rows = []
    for r in results:
        c, p, s = r.case, r.peak_bytes, r.seconds
        if p.has("dense") and p.has("chunked"):
            mem = p.ratio("chunked", "dense")
            mem_text = f"{fraction(mem)}: {_verdict(mem <= MEMORY_RATIO_LIMIT)}"
        else:
            mem_text = "-"
        if s.has("dense") and s.has("chunked"):
            ratio = s.ratio("chunked", "dense")
            time_text = f"{ratio:.2f}: {_verdict(ratio <= TIME_RATIO_LIMIT)}"
        else:
            time_text = "-"
        one = f"{s.median('one chunk'):.3f}" if s.has("one chunk") else s.failures.get("one chunk", "-")
        per_one = f"{s.ratio('chunked', 'one chunk'):.2f}" if s.has("chunked") and s.has("one chunk") else "-"
        grads = (f"{r.max_abs_grad_diff:.1e} ({r.max_abs_grad:.1e})" if r.max_abs_grad_diff is not None else "-")
        losses = " / ".join(f"{r.loss[a]:.6f}" if a in r.loss and s.has(a) else "-" for a in ("dense", "chunked"))
        rows.append([str(c.k), str(c.n), str(c.d), str(c.chunk_size), _peak(p, "dense"), _peak(p, "chunked"),
                     _peak(p, "one chunk"), mem_text, _arm_time(s, "dense"), _arm_time(s, "chunked"), time_text,
                     one, per_one, grads, losses])
    lines = ["### 2. ArcLoss forward + backward: chunked over dense", "", *markdown_table(header, rows)]
    if results:
        lines += ["", f"Peak memory: {results[0].peak_source}."]
    return lines


def _case_cells(r: QuantizerResult) -> list[str]:
    """K, D, N, chunk size and precision of a quantiser result: the first cells of its rows."""
    return [str(r.case.k), str(r.case.d), str(r.case.n), str(r.case.chunk_size), r.dtype]


def _quantizer_section(device: str, results: Sequence[QuantizerResult], vq_version: Optional[str]) -> list[str]:
    lines = ["### 3. Quantisers forward + backward: ArcQuantizer, VectorQuantizer2, VectorQuantize", ""]
    if not vq_version:
        lines += ["vector-quantize-pytorch is not installed (`pip install vector-quantize-pytorch`, a "
                  "benchmark-only dependency): its arm and the throughput ratio are left out.", ""]
    lines += ["Milliseconds per forward + backward (median; range). Throughput ratio = VectorQuantize time / "
              f"ArcQuantizer time (target >= {THROUGHPUT_MIN}).", ""]
    case_header = ["K", "D", "N", "chunk", "precision"]
    rows = []
    for r in results:
        s = r.seconds
        cells = [_arm_time(s, a, 1e3, 2) if (a in s.samples or a in s.failures) else "not installed"
                 for a in QUANTIZER_ARMS]
        ratios = []
        for arm in ("ArcQuantizer", "ArcQuantizer chunked"):
            if s.has(arm) and s.has("VectorQuantize"):
                value = s.ratio("VectorQuantize", arm)
                ratios.append(f"{value:.2f}: {_verdict(value >= THROUGHPUT_MIN)}")
            else:
                ratios.append("-")
        not_finite = [a for a, ok in r.finite.items() if not ok]
        finite = "NO: " + ", ".join(not_finite) if not_finite else "yes" if r.finite else "-"
        rows.append([*_case_cells(r), *cells, *ratios, finite])
    lines += markdown_table([*case_header, *(f"{a} ms" for a in QUANTIZER_ARMS),
                             "ArcQuantizer / VectorQuantize throughput", "chunked / VectorQuantize throughput",
                             "output, loss, gradient finite"], rows)
    if device == "cuda" and results:
        lines += ["", "Peak memory of one forward + backward above what was allocated before it "
                  "(`torch.cuda.max_memory_allocated`, reset per arm):", ""]
        rows = []
        for r in results:
            cells = [_memory(r.peak_bytes[a]) if a in r.peak_bytes else r.seconds.failures.get(a, "-")
                     for a in QUANTIZER_ARMS]
            both = "ArcQuantizer" in r.peak_bytes and "ArcQuantizer chunked" in r.peak_bytes
            ratio = fraction(r.peak_bytes["ArcQuantizer chunked"] / r.peak_bytes["ArcQuantizer"]) if both else "-"
            rows.append([*_case_cells(r), *cells, ratio])
        lines += markdown_table([*case_header, *QUANTIZER_ARMS, "chunked / dense"], rows)
    return lines


CPU_METHOD = """
- **A shared CPU.** This machine's cores are shared with other processes (see the load average
  above), so figures drift by several percent between runs; that is why each ratio compares arms
  run alternately within one run, and why ranges are shown. With torch's default intra-op threads
  on an oversubscribed machine every parallel kernel waits for a descheduled thread (small ops
  became ~10x slower), so the run uses `torch.set_num_threads(1)` (`--threads`) for all arms alike.
- **1. Train step.** Whole steps on a CPU vary by several percent from one to the next, more
  than the quantiser costs, so the second table times the quantisers alone at the same latent
  shape with many repeats and reports what they add to a step: that is the precise figure; the
  end-to-end ratio is the check that nothing else differs.
- **2. ArcLoss.** Each measurement is a fresh subprocess; the peak is the rise of the process's
  peak resident set (`VmHWM`, reset through `/proc/self/clear_refs` just before the call) over its
  resident set before it: all memory the call touched, whoever allocated it (CPU torch has no
  allocator statistics to ask).
- **3. Quantisers.** No memory figures on the CPU (see section 2 for ArcLoss's). Figures depend on
  the process's allocator state: VectorQuantize allocates several K x N tensors per call, which
  are much cheaper once the heap is warm (as in a training process, and as here, where the
  train-step benchmark runs first) than in a fresh process.
"""

CUDA_METHOD = """
- **Timing.** CUDA events around each call (`benchmarks.measure.timed`: synchronised before,
  events recorded on the current stream, read after the end event completes), warm-up calls
  first, then interleaved repeats (A B, B A, ...), median. Train steps are timed inside
  Lightning's loop from `on_train_batch_start` to `on_train_batch_end` with events (no host
  synchronisation per step). fp32 runs use torch's default TF32 settings (shown above).
- **Memory.** `torch.cuda.max_memory_allocated` reset just before one call of each arm, minus
  the memory allocated before it (inputs, codebooks, modules): what the call itself needs.
- **Out of memory** is a result: the arm is reported as such and the run goes on; a train step
  that does not fit is retried at half the batch (the table says which sizes did not fit).
- **bf16** runs each quantiser's forward under `torch.autocast("cuda", dtype=torch.bfloat16)` on
  bf16 latents; ArcQuantizer computes its cosines and ArcLoss in float32 with autocast disabled.
"""


def machine_rows(machine: Mapping[str, Any]) -> dict[str, str]:
    """The rows of the "Machine and command" table from a :func:`arcvq_plugin.machine.machine_description`."""
    memory = machine.get("memory_gib")
    rows = {"CPU": str(machine["cpu_model"]), "cores": str(machine["cpu_count"]),
            "memory": "unknown" if memory is None else f"{memory:.1f} GiB"}
    if machine.get("gpu") is None:
        rows["GPU"] = "none used (CPU run)"
    else:
        rows["GPU"] = str(machine["gpu"])
        rows["CUDA (torch build) / cuDNN"] = f"{machine['cuda_build']} / {machine['cudnn']}"
        rows["TF32 (matmul / cuDNN)"] = f"{machine['tf32_matmul']} / {machine['tf32_cudnn']}"
    rows.update({"python": str(machine["python"]), "torch": str(machine["torch"]),
                 "torch intra-op threads": str(machine["torch_threads"]),
                 "load average at start (1, 5, 15 min)": ", ".join(f"{x:.1f}" for x in machine["load_average_start"])})
    return rows


def render_section(run: DeviceRun) -> str:
    """The markdown of ``run``'s device section (without the heading :mod:`benchmarks.document` adds)."""
    plan = run.plan
    lines = []
    if plan.quick:
        lines += ["**Toy sizes (`--quick`): a smoke run; these figures say nothing about the targets.**", ""]
    machine = [*machine_rows(run.machine).items(), ("vector-quantize-pytorch", run.vq_version or "not installed"),
               ("command", f"`{run.command}`"), ("total run time", f"{run.minutes:.1f} min")]
    lines += ["### Machine and command", "", *markdown_table(["", ""], machine), ""]
    lines += ["### Targets", ""]
    lines += _targets_section(check_targets(plan.device, run.train, run.arc_loss, run.quantizers))
    lines += [""] + _train_section(plan.device, run.train) + [""] + _arc_loss_section(run.arc_loss)
    lines += [""] + _quantizer_section(plan.device, run.quantizers, run.vq_version)
    lines += ["", "### How these were measured on this device", "",
              (CPU_METHOD if plan.device == "cpu" else CUDA_METHOD).strip()]
    return "\n".join(lines)


def not_measured_section(plan: Plan) -> str:
    """The section of ``plan``'s device before it is measured: how to measure it
    (:data:`MEASURE_COMMANDS`), what ``plan`` will measure, and every target marked ``not measured``."""
    train = "; ".join(f"{c.name}, batch up to {c.batch_size}, arms {', '.join(a.name for a in c.arms)}"
                      for c in plan.train)
    arc = "; ".join(f"K={c.k}, N={c.n}, D={c.d} (chunk {c.chunk_size})" for c in plan.arc_loss)
    quant = "; ".join(f"K={c.k}, D={c.d}, N={c.n} (chunk {c.chunk_size})" for c in plan.quantizers)
    lines = [f"{NOT_MEASURED_MARK} To measure: {MEASURE_COMMANDS[plan.device]}.", "",
             "It will measure:", "",
             f"- 1. VQGAN train step: {train};",
             f"- 2. ArcLoss chunked vs dense: {arc};",
             f"- 3. quantisers ({', '.join(QUANTIZER_ARMS)}) in {' and '.join(plan.quantizer_dtypes)}: {quant}.",
             "", "### Targets", ""]
    lines += _targets_section(check_targets(plan.device, [], [], [], measured=False))
    return "\n".join(lines)


def not_measured_sections() -> dict[str, str]:
    """device -> its section before it is measured, at the sizes of its full plan: what a new report
    holds for the devices its first run did not measure."""
    return {device: not_measured_section(plan_for(device, quick=False)) for device in DEVICES}
