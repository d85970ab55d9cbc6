"""Reading checkpoints: the one loader every command uses, tensors only unless the user trusts the file.

The trust rule (:func:`load_checkpoint`):

- By default a file is read with ``torch.load(weights_only=True)``, which unpickles only tensors
  and plain containers. Every file this project writes (``arcvq-train`` checkpoints,
  ``arcvq-convert`` outputs, ``arcvq-prior`` priors, cached results) loads that way.
- A file that pickles other objects (callbacks, ``argparse.Namespace`` or OmegaConf
  hyper-parameters of older Lightning releases, or a call planted in the file) is refused with a
  :class:`CheckpointReadError` naming the file, the pickled globals and ``--trust-checkpoint``,
  before anything from it runs.
- With ``trust_checkpoint=True`` (the ``--trust-checkpoint`` flag of the CLIs) such a file is
  loaded with ``weights_only=False``, which runs code from the file, and a warning says so.
- A missing, truncated or corrupt file is a :class:`CheckpointReadError` naming it.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch

from arcvq_plugin.validation import check_bool

__all__ = ["CheckpointReadError", "LoadedCheckpoint", "TRUST_CHECKPOINT_HELP", "load_checkpoint", "load_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]

TRUST_CHECKPOINT_HELP = ("load checkpoints that pickle Python objects besides tensors with torch.load(weights_only=False), "
                         "which runs code from the file (default: tensors only, such files are refused)")
"""The help of the ``--trust-checkpoint`` option of the commands that read checkpoints."""

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt, pickles objects without trust or holds no state dict."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint file read by :func:`load_checkpoint`.

    Attributes:
        content: what the file holds (a Lightning checkpoint dict, a bare state dict, ...).
        weights_only: True when it was read with ``torch.load(weights_only=True)`` (tensors and
            plain containers only); False when it pickles other objects and the caller trusted it.
        unsafe_globals: the classes and functions the file pickles besides tensors, which made the
            tensors-only read refuse it (empty when ``weights_only``).
    """

    content: Any
    weights_only: bool
    unsafe_globals: tuple[str, ...]


def load_checkpoint(path: PathLike, trust_checkpoint: bool = False) -> LoadedCheckpoint:
    """``torch.load(path)`` on the CPU under the module's trust rule.

    Tensors-only loading first. When the file pickles other objects it is refused
    (:class:`CheckpointReadError` naming the file, the pickled globals and ``--trust-checkpoint``),
    unless ``trust_checkpoint`` (default False) is True: then a warning names the file and it is
    loaded with ``weights_only=False``. A missing, truncated or corrupt file is a
    :class:`CheckpointReadError` naming it.
    """
    check_bool("trust_checkpoint", trust_checkpoint)
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint {os.fspath(path)!r} does not exist or is not a file")
    try:
        return LoadedCheckpoint(torch.load(path, map_location="cpu", weights_only=True), True, ())
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise _unreadable(path, err) from err
        unsafe = _unsafe_globals(path, str(err))
    except Exception as err:  # noqa: BLE001 - zip reader, legacy format and pickle errors alike
        raise _unreadable(path, err) from err
    named = ", ".join(unsafe) or "unknown objects"
    if not trust_checkpoint:
        raise CheckpointReadError(
            f"checkpoint {os.fspath(path)!r} pickles Python objects besides tensors ({named}), as older Lightning "
            "releases wrote them (callbacks, hyper-parameters) and as a file built to run code when loaded holds "
            "them: refused. If you trust where the file comes from, pass --trust-checkpoint (library: "
            "trust_checkpoint=True) to load it with torch.load(weights_only=False), which runs code stored in the file"
        ) from None
    warnings.warn(f"{os.fspath(path)} pickles Python objects besides tensors ({named}): loading it with "
                  "torch.load(weights_only=False), which runs code from the file (--trust-checkpoint was given)",
                  UserWarning, stacklevel=2)
    try:
        return LoadedCheckpoint(torch.load(path, map_location="cpu", weights_only=False), False, unsafe)
    except Exception as err:  # noqa: BLE001 - torch raises several types for unreadable files
        raise _unreadable(path, err) from err


def _unsafe_globals(path: PathLike, message: str) -> tuple[str, ...]:
    """The globals ``path`` pickles besides tensors: torch's scan of the file (it runs nothing from
    it) where this torch has one, else the global torch's refusal ``message`` names."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is not None:
        try:
            return tuple(sorted(finder(os.fspath(path))))
        except Exception:  # noqa: BLE001 - the refusal message below still names one global
            pass
    return tuple(_UNSAFE_GLOBAL.findall(message))


def _unreadable(path: PathLike, err: BaseException) -> CheckpointReadError:
    first_line = (str(err).splitlines() or [""])[0][:300]
    return CheckpointReadError(f"cannot read checkpoint {os.fspath(path)!r}: not a readable torch checkpoint "
                               f"(truncated or corrupt?): {type(err).__name__}: {first_line}")


def load_state_dict(path: PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict) at ``path``, on the CPU
    (tensors only unless ``trust_checkpoint``, default False; see :func:`load_checkpoint`)."""
    checkpoint = load_checkpoint(path, trust_checkpoint).content
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointReadError(f"{os.fspath(path)!r} is neither a Lightning checkpoint with a 'state_dict' "
                                  "nor a state dict of tensors")
    return dict(state_dict)
