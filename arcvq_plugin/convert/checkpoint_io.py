"""Reading users' checkpoints deliberately and publishing new files atomically.

Reading: torch >= 2.6 loads with ``weights_only=True``, which refuses checkpoints written by old
Lightning releases (they pickle callback classes, ``argparse.Namespace`` hyper-parameters, ...).
``load_checkpoint`` tries ``weights_only=True`` first and falls back to ``weights_only=False``
only when the caller says the file is trusted (``--trust-checkpoint``), reporting that it did.

Writing: :class:`arcvq_plugin.atomic_outputs.AtomicOutputs` (re-exported here) hands out
temporary paths in the destination folders; nothing appears under the final names until
``publish()`` moves each file in place with ``os.replace`` (atomic on one file system). An
exception or Ctrl-C before that removes the temporary files and leaves every existing file untouched.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..atomic_outputs import AtomicOutputs

__all__ = ["ConversionError", "LoadedCheckpoint", "check_finite", "load_checkpoint", "AtomicOutputs"]


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message says why and what to do."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk.

    Attributes:
        state_dict: name -> tensor (the ``"state_dict"`` entry of a Lightning checkpoint, or the
            file's dict itself when it holds tensors directly).
        top_level: the file's other top-level entries (epoch, global_step, ...), untouched.
        weights_only: False when the file was read with ``weights_only=False`` (trusted pickle).
        unsafe_globals: the non-tensor classes/functions that made ``weights_only=True`` fail.
    """

    state_dict: dict[str, torch.Tensor]
    top_level: dict[str, Any]
    weights_only: bool
    unsafe_globals: list[str]


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unsafe_globals(path: Path, message: str) -> list[str]:
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is not None:
        try:
            return sorted(finder(str(path)))
        except Exception:  # noqa: BLE001 - the message below still names one global
            pass
    return _UNSAFE_GLOBAL.findall(message)


def load_checkpoint(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> LoadedCheckpoint:
    """Load ``path`` on the CPU, ``weights_only=True`` first.

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
    if not path.is_file():
        raise ConversionError(f"input checkpoint {str(path)!r} does not exist or is not a file")
    weights_only, unsafe = True, []
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for unreadable files
        message = str(err)
        if "Unsupported global" not in message:
            raise ConversionError(
                f"cannot read {str(path)!r}: it is not a readable torch checkpoint (corrupt or truncated "
                f"file?): {type(err).__name__}: {message.splitlines()[0][:300]}"
            ) from err
        unsafe = _unsafe_globals(path, message)
        if not trust_checkpoint:
            raise ConversionError(
                f"{str(path)!r} holds pickled Python objects besides tensors ({', '.join(unsafe) or 'unknown'}), "
                "as checkpoints of old pytorch-lightning releases do (callbacks, hyper-parameters). torch >= 2.6 "
                "refuses them with weights_only=True. If you trust where the file comes from, rerun with "
                "--trust-checkpoint (library: trust_checkpoint=True) to load it with weights_only=False, "
                "which can execute code stored in the file."
            ) from err
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # noqa: BLE001
            raise ConversionError(
                f"cannot read {str(path)!r} even with weights_only=False: {type(err2).__name__}: {err2}"
            ) from err2
        weights_only = False
    state_dict, top_level = _split(obj, path)
    return LoadedCheckpoint(state_dict, top_level, weights_only, unsafe)


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
