"""The one place a device name becomes a ``torch.device``.

``resolve_device("auto")`` (or None) is CUDA when torch sees a GPU, else the CPU; ``"cpu"``,
``"cuda"`` and ``"cuda:N"`` are taken as given, after checking that torch can use them, so a
command asked for a GPU it does not have fails before any work with a message naming ``what``.
"""
from __future__ import annotations

from typing import Union

import torch

__all__ = ["resolve_device"]


def resolve_device(name: Union[str, torch.device, None] = "auto", what: str = "--device") -> torch.device:
    """``name`` (``"auto"``/None, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device) as a torch.device.

    Raises:
        ValueError naming ``what``: an unknown name, CUDA without a GPU, or a CUDA index torch lacks.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{what} must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {name}: torch sees no CUDA device (torch {torch.__version__}, built for "
                             f"CUDA {torch.version.cuda}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device
