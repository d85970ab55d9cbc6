"""Reading checkpoints on torch >= 2.6, where ``torch.load`` defaults to ``weights_only=True``.

Checkpoints written by old Lightning releases pickle Python objects (callbacks,
``argparse.Namespace`` hyper-parameters ...), which ``weights_only=True`` refuses. Loading them
with ``weights_only=False`` runs code from the file, so it is done deliberately and said aloud.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Mapping, Union

import torch

__all__ = ["load_checkpoint", "load_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]


def load_checkpoint(path: PathLike) -> tuple[Any, bool]:
    """``torch.load(path)`` on the CPU -> ``(object, weights_only)``.

    Tensors-only loading first; when the file pickles other objects, a warning names the file
    and it is loaded with ``weights_only=False`` (only load checkpoints you trust).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True), True
    except pickle.UnpicklingError:
        warnings.warn(f"{path} pickles Python objects besides tensors (an older Lightning "
                      "checkpoint?): loading it with torch.load(weights_only=False), which runs "
                      "code from the file: only load checkpoints you trust", UserWarning, stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False), False


def load_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict) at ``path``, on the CPU."""
    checkpoint, _ = load_checkpoint(path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} is neither a Lightning checkpoint with a 'state_dict' nor a state dict")
    return dict(state_dict)
