"""Whole checkpoints only: every checkpoint a training run writes is written atomically.

:class:`AtomicCheckpointIO` is the Trainer's checkpoint plugin (``Trainer(plugins=[...])``), so it
writes the ``ModelCheckpoint`` files, the ``kill -USR1`` checkpoint and the crash checkpoint
alike: ``torch.save`` into a temporary file beside the target (``.<name>.partial-<pid>``, on the
log folder's own file system), ``flush`` + ``fsync``, then ``os.replace`` onto the target and an
``fsync`` of the folder. A ``kill -9`` at any moment leaves either the previous complete file or the
new complete file under the target name, never a truncated one. A failed write (full disk, quota,
read-only folder) removes the temporary file and raises :class:`CheckpointWriteError` naming the
target and the cause ("no space left on device" for a full disk); the previous file is untouched.
Temporary files left by a killed process are removed at the next successful write of that target.

:class:`CurrentLastModelCheckpoint` is Lightning's ``ModelCheckpoint`` with
``enable_version_counter=False`` by default: ``last.ckpt`` is always overwritten by the newest
state (Lightning's version counter otherwise diverts saves to ``last-v1.ckpt`` when ``last.ckpt``
exists but was not written by this callback instance: after moving a log folder and resuming it,
or after a ``kill -USR1`` checkpoint).
"""
from __future__ import annotations

import errno
import glob
import os
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "CurrentLastModelCheckpoint", "write_atomically"]

PARTIAL_MARKER = ".partial-"


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written; the target keeps its previous content."""


def _partial_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{PARTIAL_MARKER}{os.getpid()}")


def _cause(err: BaseException, folder: str) -> str:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device (disk full or quota exceeded)"
    try:
        if os.statvfs(folder).f_bavail == 0:
            return f"no space left on device (disk full): {type(err).__name__}: {err}"
    except OSError:
        pass
    return f"{type(err).__name__}: {err}"


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(checkpoint: Any, path: str) -> None:
    """``torch.save(checkpoint)`` to ``path`` through a temporary file beside it, fsync and rename.

    Raises:
        CheckpointWriteError: the write failed (the message names ``path`` and the cause); no
            temporary file is left and ``path`` keeps its previous content.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    partial = _partial_path(path)
    try:
        with open(partial, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException as err:
        cause = _cause(err, folder)  # while the partial file still fills the disk
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(err, (OSError, RuntimeError)):
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {cause}; "
                                       "the previous file (if any) is unchanged") from err
        raise
    _fsync_folder(folder)
    name = os.path.basename(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}{PARTIAL_MARKER}*")):
        os.remove(stale)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` writing through :func:`write_atomically` (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        write_atomically(checkpoint, os.fspath(path))


class CurrentLastModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the newest state (``enable_version_counter``
    defaults to False; every other argument is Lightning's)."""

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any):
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)
