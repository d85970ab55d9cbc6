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

__all__ = ["CheckpointReadError", "load_checkpoint", "load_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or holds no state dict."""


def load_checkpoint(path: PathLike) -> tuple[Any, bool]:
    """``torch.load(path)`` on the CPU -> ``(object, weights_only)``.

    Tensors-only loading first; when the file pickles other objects, a warning names the file
    and it is loaded with ``weights_only=False`` (only load checkpoints you trust). A missing,
    truncated or corrupt file is a :class:`CheckpointReadError` naming it.
    """
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint {os.fspath(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), True
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise _unreadable(path, err) from err
        warnings.warn(f"{path} pickles Python objects besides tensors (an older Lightning "
                      "checkpoint?): loading it with torch.load(weights_only=False), which runs "
                      "code from the file: only load checkpoints you trust", UserWarning, stacklevel=2)
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


def load_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict) at ``path``, on the CPU."""
    checkpoint, _ = load_checkpoint(path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointReadError(f"{os.fspath(path)!r} is neither a Lightning checkpoint with a 'state_dict' "
                                  "nor a state dict of tensors")
    return dict(state_dict)
