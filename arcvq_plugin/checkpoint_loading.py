"""Reading checkpoints: tensors only unless the user trusts the file.

Every command that reads a checkpoint loads it with ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers. Checkpoints written by ``arcvq-train`` load that way.
A file that pickles other objects (callbacks, ``argparse.Namespace`` or OmegaConf
hyper-parameters of older Lightning releases, or a call planted in the file) is refused with a
:class:`CheckpointReadError` before anything from it runs, unless the caller passes
``trust_checkpoint=True`` (the ``--trust-checkpoint`` flag of the CLIs): then it is loaded with
``weights_only=False``, which runs code from the file, and a warning says so.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Mapping, Union

import torch

from arcvq_plugin.validation import check_bool

__all__ = ["CheckpointReadError", "load_checkpoint", "load_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or holds no state dict."""


def load_checkpoint(path: PathLike, trust_checkpoint: bool = False) -> tuple[Any, bool]:
    """``torch.load(path)`` on the CPU -> ``(object, weights_only)``.

    Tensors-only loading first. When the file pickles other objects it is refused
    (:class:`CheckpointReadError` naming the file and ``--trust-checkpoint``), unless
    ``trust_checkpoint`` (default False) is True: then a warning names the file and it is loaded
    with ``weights_only=False``. A missing, truncated or corrupt file is a
    :class:`CheckpointReadError` naming it.
    """
    check_bool("trust_checkpoint", trust_checkpoint)
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint {os.fspath(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), True
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise _unreadable(path, err) from err
        if not trust_checkpoint:
            raise CheckpointReadError(
                f"checkpoint {os.fspath(path)!r} pickles Python objects besides tensors (an older Lightning "
                "checkpoint, or a file that runs code when loaded): refused; pass --trust-checkpoint "
                f"to load it with torch.load(weights_only=False) if you trust its origin ({str(err).splitlines()[0][:200]})"
            ) from None
        warnings.warn(f"{path} pickles Python objects besides tensors (an older Lightning "
                      "checkpoint?): loading it with torch.load(weights_only=False), which runs "
                      "code from the file (--trust-checkpoint was given)", UserWarning, stacklevel=2)
        try:
            return torch.load(path, map_location="cpu", weights_only=False), False
        except Exception as err2:  # noqa: BLE001 - torch raises several types for unreadable files
            raise _unreadable(path, err2) from err2
    except Exception as err:  # noqa: BLE001 - zip reader, legacy format and pickle errors alike
        raise _unreadable(path, err) from err


def _unreadable(path: PathLike, err: BaseException) -> CheckpointReadError:
    first_line = (str(err).splitlines() or [""])[0][:300]
    return CheckpointReadError(f"cannot read checkpoint {os.fspath(path)!r}: not a readable torch file "
                               f"(truncated or corrupt?): {type(err).__name__}: {first_line}")


def load_state_dict(path: PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict) at ``path``, on the CPU
    (tensors only unless ``trust_checkpoint``, default False; see :func:`load_checkpoint`)."""
    check_bool("trust_checkpoint", trust_checkpoint)
    checkpoint, _ = load_checkpoint(path, trust_checkpoint)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointReadError(f"{os.fspath(path)!r} is neither a Lightning checkpoint with a 'state_dict' "
                                  "nor a state dict of tensors")
    return dict(state_dict)
