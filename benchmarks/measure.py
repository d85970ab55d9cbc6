"""Side-by-side timing and the machine description shared by every benchmark."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

__all__ = ["Comparison", "interleaved", "machine_description", "median", "timed"]


def median(values: list[float]) -> float:
    """The median of a non-empty list of floats."""
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)


@dataclass
class Comparison:
    """Repeated measurements of two or more arms, taken in interleaved order.

    ``samples[arm]`` is the list of that arm's measurements (seconds, bytes, ...).
    """

    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, arm: str) -> float:
        return median(self.samples[arm])

    def ratio(self, numerator: str, denominator: str) -> float:
        """median(numerator) / median(denominator)."""
        return self.median(numerator) / self.median(denominator)


def interleaved(arms: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1) -> Comparison:
    """Run every arm ``warmup`` times (discarded), then ``repeats`` rounds, reversing the arm
    order every other round (A B, B A, ...) so that drifting machine load hits all arms alike.

    Each arm is a callable returning one measurement (e.g. seconds it took).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    result = Comparison({name: [] for name in names})
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            result.samples[name].append(arms[name]())
    return result


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes (wall clock, ``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description() -> dict[str, str]:
    """CPU model, cores, memory, torch version and threads, GPU (or its absence)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages * page_size / 2**30:.1f} GiB"
    except (ValueError, OSError):
        memory = "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": memory,
        "GPU": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch intra-op threads": str(torch.get_num_threads()),
        "load average at start (1, 5, 15 min)": load,
    }
