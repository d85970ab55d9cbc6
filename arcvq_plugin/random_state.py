"""RandomStateCheckpoint: the random number generators' states saved in checkpoints, for exact resume.

Lightning checkpoints weights, optimizers and loop counters but not the RNG states, so a run
resumed from a checkpoint draws different dropout masks, random remaps or main-process
augmentations than the straight run would have. This callback saves python's ``random``,
numpy's global generator, torch's CPU generator and every CUDA device's generator at every
checkpoint (under DDP the states of every rank, gathered), and restores them at train start,
just before the first resumed batch.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

__all__ = ["RandomStateCheckpoint", "collect_random_states", "restore_random_states"]

CHECKPOINT_KEY = "arcvq_random_states"


def collect_random_states() -> dict[str, Any]:
    """This process's generator states: python, numpy, torch CPU and (when present) CUDA, as
    tensors and plain containers (checkpoints stay loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Set the generators to ``states`` (as returned by :func:`collect_random_states`)."""
    random.setstate(_as_python_state(states["python"]))
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_python_state(state: Any) -> tuple:
    """python's state as ``random.setstate`` wants it (a checkpoint may turn tuples into lists)."""
    version, internal, gauss = state
    return int(version), tuple(int(x) for x in internal), gauss


class RandomStateCheckpoint(pl.Callback):
    """Save the RNG states of every rank in each checkpoint; restore this rank's at train start.

    Added by ``arcvq-train`` and by the patched upstream ``main.py`` to every run.
    """

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] = []

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = collect_random_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            checkpoint[CHECKPOINT_KEY] = gathered
        else:
            checkpoint[CHECKPOINT_KEY] = [states]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._to_restore = list(checkpoint.get(CHECKPOINT_KEY, []))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._to_restore:
            return
        rank = trainer.global_rank
        if len(self._to_restore) != trainer.world_size:
            raise RuntimeError(f"the checkpoint holds the random states of {len(self._to_restore)} "
                               f"process(es) but this run has {trainer.world_size}: resume with the "
                               "same number of processes (or drop 'arcvq_random_states' from it)")
        restore_random_states(self._to_restore[rank])
        self._to_restore = []
