"""Side-by-side measurement shared by every benchmark: interleaved repeats, a device clock (CUDA
events on a GPU, ``time.perf_counter`` on the CPU), peak device memory, running out of memory as
a result rather than a crash; the machine description is :func:`arcvq_plugin.machine.machine_description`."""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

from arcvq_plugin import devices
from arcvq_plugin.machine import machine_description
from arcvq_plugin.validation import check_int

from .devices import check_device

__all__ = ["Comparison", "Interval", "interleaved", "is_out_of_memory", "machine_description", "median",
           "out_of_memory_note", "peak_memory", "release_memory", "resolve_device", "synchronize", "timed"]

OUT_OF_MEMORY = "out of memory"


def median(values: list[float]) -> float:
    """The median of a non-empty list of floats."""
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)


@dataclass
class Comparison:
    """Repeated measurements of two or more arms, taken in interleaved order.

    ``samples[arm]`` is the list of that arm's measurements (seconds, bytes, ...);
    ``failures[arm]`` says why an arm has none (e.g. it ran out of memory).
    """

    samples: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def median(self, arm: str) -> float:
        return median(self.samples[arm])

    def ratio(self, numerator: str, denominator: str) -> float:
        """median(numerator) / median(denominator)."""
        return self.median(numerator) / self.median(denominator)

    def has(self, arm: str) -> bool:
        """Whether ``arm`` has measurements (it exists and did not fail)."""
        return arm not in self.failures and bool(self.samples.get(arm))


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` as a torch.device; ``"cuda"`` must have a GPU (checked here)."""
    check_device(name)
    return devices.resolve_device(name, what="device")


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Interval:
    """One timed interval on ``device``: ``start()``, the work, ``stop()``, then ``seconds()``.

    On a GPU two CUDA events are recorded on the current stream (no host synchronisation until
    ``seconds()``), so the interval is the device's time for the work queued in between; on the
    CPU it is wall-clock time (``time.perf_counter``).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        else:
            self._start_time = self._end_time = None

    def start(self) -> None:
        if self.cuda:
            self._start.record()
        else:
            self._start_time = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._end.record()
        else:
            self._end_time = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        if self._start_time is None or self._end_time is None:
            raise RuntimeError("Interval.seconds() before start() and stop()")
        return self._end_time - self._start_time


def timed(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> float:
    """Seconds ``fn()`` takes on ``device``: synchronised before, CUDA events around it on a GPU
    (``time.perf_counter`` on the CPU)."""
    synchronize(device)
    interval = Interval(device)
    interval.start()
    fn()
    interval.stop()
    return interval.seconds()


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Run ``fn()`` and return the rise of the device's peak allocated memory over what was
    allocated before it, in bytes (``torch.cuda.max_memory_allocated``, reset just before).
    None on the CPU, where torch keeps no allocator statistics (:mod:`benchmarks.arc_loss_memory`
    measures the process's peak resident set there instead)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device (or the host) ran out of memory."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def release_memory(device: torch.device) -> None:
    """Free what the last (failed) attempt left: garbage, and on a GPU the allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory_note(error: BaseException) -> str:
    """``"out of memory (<first line of the error>)"``, as reports show an arm that ran out."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{OUT_OF_MEMORY} ({first_line[:160]})"


def interleaved(arms: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> Comparison:
    """Run every arm ``warmup`` times (discarded), then ``repeats`` rounds, reversing the arm
    order every other round (A B, B A, ...) so that drifting machine load hits all arms alike.

    Each arm is a callable returning one measurement (e.g. seconds it took). An arm that runs out
    of memory is a result, not a crash: it is recorded in ``failures`` (its samples dropped), the
    memory is released and the other arms go on. Any other error propagates.
    """
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    names = list(arms)
    result = Comparison({name: [] for name in names})

    def attempt(name: str) -> Optional[float]:
        failure = None
        try:
            return arms[name]()
        except Exception as error:  # noqa: BLE001 - only out-of-memory is kept, see below
            if not is_out_of_memory(error):
                raise
            failure = out_of_memory_note(error)
        result.failures[name] = failure  # outside the handler: the traceback's tensors are gone
        result.samples[name] = []
        release_memory(device)
        return None

    for _ in range(warmup):
        for name in names:
            if name not in result.failures:
                attempt(name)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            if name not in result.failures:
                value = attempt(name)
                if value is not None:
                    result.samples[name].append(value)
    return result
