"""Reading the checkpoint to convert and publishing new files atomically.

Reading: :func:`read_source_checkpoint` reads the file through the project's one loader,
:func:`arcvq_plugin.checkpoint_loading.load_checkpoint` (tensors only unless
``--trust-checkpoint``; a file that pickles other objects is refused naming its globals), splits
it into the state dict and the other top-level entries, and reports every reading failure as a
:class:`ConversionError`.

Writing: :class:`arcvq_plugin.atomic_outputs.AtomicOutputs` (re-exported here) hands out
temporary paths in the destination folders; nothing appears under the final names until
``publish()`` moves each file in place with ``os.replace`` (atomic on one file system). An
exception or Ctrl-C before that removes the temporary files and leaves every existing file untouched.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..atomic_outputs import AtomicOutputs
from ..checkpoint_loading import CheckpointReadError, load_checkpoint

__all__ = ["AtomicOutputs", "ConversionError", "SourceCheckpoint", "check_finite", "read_source_checkpoint"]


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message says why and what to do."""


@dataclass
class SourceCheckpoint:
    """The checkpoint to convert, as read from disk.

    Attributes:
        state_dict: name -> tensor (the ``"state_dict"`` entry of a Lightning checkpoint, or the
            file's dict itself when it holds tensors directly).
        top_level: the file's other top-level entries (epoch, global_step, ...), untouched.
        weights_only: False when the file was read with ``weights_only=False`` (trusted pickle).
        unsafe_globals: the non-tensor classes/functions that made ``weights_only=True`` refuse it.
    """

    state_dict: dict[str, torch.Tensor]
    top_level: dict[str, Any]
    weights_only: bool
    unsafe_globals: tuple[str, ...]


def read_source_checkpoint(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> SourceCheckpoint:
    """Read ``path`` on the CPU with :func:`arcvq_plugin.checkpoint_loading.load_checkpoint` and split it.

    Args:
        path: a ``torch.save`` file (Lightning checkpoint or a plain state dict).
        trust_checkpoint: allow ``weights_only=False`` (arbitrary code execution from the file's
            pickle) when ``weights_only=True`` refuses the file. Default False: refuse instead,
            naming the globals that blocked the safe load.

    Raises:
        ConversionError: missing, corrupt or truncated file; unsafe pickle without trust; no
            tensors in it.
    """
    path = Path(path)
    try:
        loaded = load_checkpoint(path, trust_checkpoint)
    except CheckpointReadError as err:
        raise ConversionError(str(err)) from err
    state_dict, top_level = _split(loaded.content, path)
    return SourceCheckpoint(state_dict, top_level, loaded.weights_only, loaded.unsafe_globals)


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """ConversionError naming the first floating-point entry of ``state_dict`` that holds NaN or inf.

    A converted model computes with every tensor of the file, so a non-finite one cannot be
    carried over; the check runs before anything is written.
    """
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ConversionError(
                    f"{str(path)!r} holds non-finite values at key {key!r} ({bad} of {tensor.numel()} entries are "
                    "NaN or inf); every floating-point tensor must be finite: the checkpoint is damaged or "
                    "comes from a diverged run, so convert an earlier checkpoint"
                )


def _split(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{str(path)!r} holds a {type(obj).__name__}, not a checkpoint dict")
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        top_level = {k: v for k, v in obj.items() if k != "state_dict"}
    else:
        state_dict, top_level = obj, {}
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ConversionError(f"{str(path)!r} has no state dict (expected a 'state_dict' mapping of tensors)")
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state_dict):
        odd = sorted(k for k in state_dict if k not in tensors)[:5]
        raise ConversionError(f"{str(path)!r}: state dict entries that are not tensors: {odd}")
    return dict(tensors), dict(top_level)
