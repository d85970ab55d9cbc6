"""The devices the benchmarks run on and how the report names them: each device's heading, and
the mark that opens the section of a device not measured yet.

A leaf: it imports no other module of :mod:`benchmarks`, so the plans, the report sections and
the document that holds them can all depend on it.
"""
from __future__ import annotations

from arcvq_plugin.validation import check_choice

__all__ = ["DEVICES", "DEVICE_TITLES", "NOT_MEASURED_MARK", "check_device"]

DEVICES = ("cpu", "cuda")
DEVICE_TITLES = {"cpu": "CPU", "cuda": "CUDA GPU"}
NOT_MEASURED_MARK = "**Not measured yet.**"


def check_device(device: str) -> None:
    """A ValueError unless ``device`` is one of :data:`DEVICES`."""
    check_choice("device", device, DEVICES)
