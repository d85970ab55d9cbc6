"""ArcLoss forward + backward: peak memory and time of the chunked path over the dense path.

Three arms, alternating (A B C, C B A, ...):

- ``dense``: ``chunk_size=None``, one (K, N) block kept from forward to backward (the fastest);
- ``chunked``: ``chunk_size`` of the case, each (K, chunk) block recomputed once in backward;
- ``one chunk``: ``chunk_size=N``, a single (K, N) block recomputed in backward (dense memory,
  chunked arithmetic: the cost of recomputation alone).

On the CPU each measurement runs in a fresh subprocess (``python -m benchmarks.arc_loss_memory
--worker``): inputs are built, a toy-size call loads every kernel, the kernel's peak-RSS mark is
reset (``/proc/self/clear_refs`` = 5, Linux), then one ``arc_margin_loss(z, codebook,
chunk_size=...).backward()`` is timed and the peak is read back as ``VmHWM - VmRSS before``:
every page the call touched, torch's allocations and the BLAS library's alike, with no
allocator of torch's own to ask on the CPU. A fresh process per measurement also keeps one
arm's freed memory from flattering the next.

On a GPU the arms run in this process: the peak is the rise of ``torch.cuda.max_memory_allocated``
over the memory allocated before the call (reset per call), the time is CUDA events around it
(:func:`benchmarks.measure.timed`); an arm that runs out of memory is reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .measure import Comparison, interleaved, peak_memory, timed

__all__ = ["ARMS", "ArcLossCase", "ArcLossResult", "run_case", "measure_once"]

SEED = 0
ARMS = ("dense", "chunked", "one chunk")


@dataclass(frozen=True)
class ArcLossCase:
    """K codes of dimension D, N latents, and the chunk size of the chunked arm."""

    k: int
    n: int
    d: int
    chunk_size: int


@dataclass
class ArcLossResult:
    case: ArcLossCase
    seconds: Comparison  # arms "dense", "chunked", "one chunk"; failures: out of memory
    peak_bytes: Comparison
    loss: dict[str, float]
    max_abs_grad_diff: Optional[float]  # dense vs chunked (None when either failed)
    max_abs_grad: Optional[float]
    peak_source: str = field(default="")  # how the peak was measured


def _inputs(case: ArcLossCase, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    z = torch.randn(case.n, case.d, generator=generator).to(device).requires_grad_()
    codebook = torch.randn(case.k, case.d, generator=generator).to(device)
    return z, codebook


def _chunk(case: ArcLossCase, arm: str) -> Optional[int]:
    return {"dense": None, "chunked": case.chunk_size, "one chunk": case.n}[arm]


# ---- CPU: one fresh process per measurement ------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_once(k: int, n: int, d: int, chunk_size: Optional[int], grad_path: Optional[str]) -> dict:
    """One timed forward + backward in this (CPU) process; returns seconds, peak_bytes, loss."""
    from arcvq_plugin.losses import arc_margin_loss

    z, codebook = _inputs(ArcLossCase(k, n, d, chunk_size or n), torch.device("cpu"))
    arc_margin_loss(z[:64], codebook[:32], chunk_size=None if chunk_size is None else 16).backward()
    z.grad = None
    if not _reset_peak_rss():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): Linux only")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    loss = arc_margin_loss(z, codebook, chunk_size=chunk_size)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) * 1024
    if grad_path:
        torch.save(z.grad, grad_path)
    return {"seconds": seconds, "peak_bytes": peak, "loss": float(loss.detach())}


def _spawn(case: ArcLossCase, arm: str, threads: int, grad_path: Optional[str]) -> dict:
    chunk = _chunk(case, arm)
    cmd = [sys.executable, "-m", "benchmarks.arc_loss_memory", "--worker", str(case.k), str(case.n),
           str(case.d), "none" if chunk is None else str(chunk), "--threads", str(threads)]
    if grad_path:
        cmd += ["--grad", grad_path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_case_cpu(case: ArcLossCase, repeats: int, threads: int) -> ArcLossResult:
    seconds, peaks, losses = Comparison({a: [] for a in ARMS}), Comparison({a: [] for a in ARMS}), {}
    with tempfile.TemporaryDirectory() as tmp:
        grads = {arm: os.path.join(tmp, f"{arm.replace(' ', '_')}.pt") for arm in ("dense", "chunked")}
        for round_index in range(repeats):
            for arm in ARMS if round_index % 2 == 0 else reversed(ARMS):
                result = _spawn(case, arm, threads, grads.get(arm) if round_index == 0 else None)
                seconds.samples[arm].append(result["seconds"])
                peaks.samples[arm].append(result["peak_bytes"])
                losses[arm] = result["loss"]
        dense_grad, chunked_grad = torch.load(grads["dense"]), torch.load(grads["chunked"])
    return ArcLossResult(case, seconds, peaks, losses, float((dense_grad - chunked_grad).abs().max()),
                         float(dense_grad.abs().max()), "peak resident set of a fresh process (VmHWM)")


# ---- GPU: in this process, allocator statistics (on the CPU: times only) -------------------
def _run_case_in_process(case: ArcLossCase, repeats: int, device: torch.device) -> ArcLossResult:
    from arcvq_plugin.losses import arc_margin_loss

    z, codebook = _inputs(case, device)
    peaks = Comparison({a: [] for a in ARMS})
    losses: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}

    def call(arm: str) -> float:
        z.grad = None
        box: dict = {}

        def work() -> None:
            loss = arc_margin_loss(z, codebook, chunk_size=_chunk(case, arm))
            loss.backward()
            box["loss"] = loss.detach()

        peak = peak_memory(lambda: box.update(seconds=timed(work, device)), device)
        if peak is not None:
            peaks.samples[arm].append(float(peak))
        losses[arm] = float(box["loss"])
        if arm in ("dense", "chunked") and arm not in grads:
            grads[arm] = z.grad.detach().clone()
        return box["seconds"]

    seconds = interleaved({arm: (lambda a=arm: call(a)) for arm in ARMS}, repeats, warmup=1, device=device)
    peaks.failures = dict(seconds.failures)
    for arm in ARMS:  # the warm-up call's peak is left out, as its time is
        kept = len(seconds.samples[arm])
        peaks.samples[arm] = peaks.samples[arm][-kept:] if kept else []
        if arm in seconds.failures:
            grads.pop(arm, None)
    diff = grad_max = None
    if "dense" in grads and "chunked" in grads:
        diff = float((grads["dense"] - grads["chunked"]).abs().max())
        grad_max = float(grads["dense"].abs().max())
    source = ("rise of torch.cuda.max_memory_allocated over the memory allocated before the call"
              if device.type == "cuda" else "not measured in process on the CPU")
    return ArcLossResult(case, seconds, peaks, losses, diff, grad_max, source)


def run_case(case: ArcLossCase, repeats: int, threads: int,
             device: torch.device = torch.device("cpu")) -> ArcLossResult:
    """``repeats`` measurements per arm, interleaved, on ``device``; gradients compared once."""
    if device.type == "cpu":
        return _run_case_cpu(case, repeats, threads)
    return _run_case_in_process(case, repeats, device)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="one ArcLoss measurement (used by python -m benchmarks)")
    parser.add_argument("--worker", nargs=4, metavar=("K", "N", "D", "CHUNK"), required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grad", default=None, help="save z.grad here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    k, n, d = (int(v) for v in args.worker[:3])
    chunk = None if args.worker[3] == "none" else int(args.worker[3])
    print(json.dumps(measure_once(k, n, d, chunk, args.grad)))


if __name__ == "__main__":
    main()
