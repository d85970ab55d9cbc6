"""The machine a run measured on, as ``arcvq-reproduce``'s results.json and the benchmark report record it.

:func:`machine_description` is called when a run starts; ``arcvq-reproduce`` adds
``load_average_end`` (:func:`load_average`) and ``wall_seconds`` when it ends.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Optional

import pytorch_lightning as pl
import torch

__all__ = ["load_average", "machine_description"]


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else ``unknown CPU``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> Optional[float]:
    """Physical memory in GiB (one decimal), None where ``os.sysconf`` cannot tell."""
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> list[float]:
    """The system's load average over 1, 5 and 15 minutes (``os.getloadavg``)."""
    return list(os.getloadavg())


def _gpu(device: torch.device) -> Optional[str]:
    """``name (memory GiB, compute capability x.y, n multiprocessors)`` of a CUDA ``device``, else None."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return (f"{props.name} ({props.total_memory / 2 ** 30:.0f} GiB, compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} multiprocessors)")


def machine_description(device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """What was measured where: the host, the device and the software, as JSON values.

    Keys (in this order): ``platform`` (``platform.platform()``), ``processor`` (architecture),
    ``cpu_count``, ``torch_threads`` (intra-op threads), ``python``, ``torch``, ``pytorch_lightning``,
    ``device`` (e.g. ``cpu``, ``cuda:0``), ``cuda`` (the GPU's name, None on the CPU), ``cpu_model``,
    ``memory_gib`` (None when unknown), ``gpu`` (name, memory, compute capability, multiprocessors;
    None on the CPU), ``cuda_build`` (torch's CUDA version, None for a CPU build), ``cudnn`` (None
    without cuDNN), ``tf32_matmul`` and ``tf32_cudnn`` (whether TF32 is allowed), and
    ``load_average_start`` (:func:`load_average` at the call: call this when the run starts).
    """
    cuda = device.type == "cuda"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__, "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if cuda else None,
            "cpu_model": _cpu_model(), "memory_gib": _memory_gib(), "gpu": _gpu(device),
            "cuda_build": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "load_average_start": load_average()}
