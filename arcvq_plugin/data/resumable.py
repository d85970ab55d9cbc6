"""A training DataLoader that resumes in the middle of an epoch exactly where a checkpoint left off.

Clusters preempt jobs at arbitrary batches; a checkpoint written there (``kill -USR1``, or a
``ModelCheckpoint`` with ``every_n_train_steps``) must continue the straight run. Lightning 2.x
saves the ``state_dict()`` of a training loader that has one and hands it back to
``load_state_dict()`` before iterating on resume; :class:`ResumableDataLoader` uses that channel:

- order: :class:`ResumableSampler`, torch's ``DistributedSampler`` shuffling (``randperm`` seeded
  with ``seed + epoch``, each rank a strided share; one process is rank 0 of 1), so the order is
  a function of (seed, epoch, rank) and Lightning keeps the sampler under DDP instead of
  replacing it; on resume the batches already trained in the epoch are skipped;
- randomness inside ``__getitem__`` (crops, flips): every sample is drawn with python's
  ``random``, numpy and torch seeded from (seed, epoch, index) and the previous states restored
  afterwards (:class:`PerSampleSeeds`), so a sample's augmentation depends neither on the worker
  that loads it nor on where the epoch was resumed;
- the global torch generator is never drawn from (a plain DataLoader draws its workers' base
  seed from it when an epoch's iterator starts, which shifts the training's random stream).

The order is the one the data module's earlier epoch-seeded sampler produced (and Lightning's
own ``DistributedSampler`` under DDP): resumability changes no run.

Resume rule: a checkpoint written at the start or the end of an epoch resumes under any batch
size, training-set length and world size (the next epoch starts from its beginning). One written
in the middle of an epoch resumes only under the batch size, training-set length and world size
it was written with; otherwise :class:`ResumePositionError` says what changed, before any batch is
trained. Lightning restores its own position in batches (batch index, batches per epoch,
accumulation windows), and under another length or world size the epoch's order itself differs,
so no other setting continues at the exact next sample.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from arcvq_plugin.validation import check_int

__all__ = ["PerSampleSeeds", "ResumableDataLoader", "ResumePositionError", "ResumableSampler"]

_SEED_MODULUS = 2**32


def _world() -> tuple[int, int]:
    """(world size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumePositionError(ValueError):
    """A mid-epoch loader state that this loader cannot continue (see the module's resume rule)."""


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` order for one or several processes, able to skip a resumed epoch's head.

    Args:
        dataset: a sized dataset.
        seed: the shuffling seed (order = f(seed, epoch, rank)).
        shuffle: shuffle (default True); False keeps index order.
        num_replicas, rank: default to the process group's (1 and 0 without one).
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None) -> None:
        world, own_rank = _world()
        super().__init__(dataset, num_replicas=world if num_replicas is None else num_replicas,
                         rank=own_rank if rank is None else rank, shuffle=shuffle, seed=int(seed))
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        """This rank's indices for the current epoch, minus the first ``skip`` (then reset to 0)."""
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class PerSampleSeeds(Dataset):
    """``dataset[index]`` drawn with python/numpy/torch RNGs seeded from (seed, epoch, index).

    The caller's RNG states are restored after each item, so loading data in the main process
    (``num_workers=0``) leaves the training's random stream untouched.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample_seed = int(np.random.SeedSequence([self.seed % _SEED_MODULUS, self.epoch, int(index)])
                          .generate_state(1)[0])
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            torch.manual_seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class ResumableDataLoader(DataLoader):
    """A shuffling training ``DataLoader`` whose position in the epoch is checkpointed by Lightning.

    Args:
        dataset: a sized (map-style) dataset.
        batch_size: samples per batch (>= 1).
        seed: seed of the order and of the per-sample random draws.
        shuffle: shuffle the order (default True).
        **kwargs: any other ``DataLoader`` argument (``num_workers``, ``collate_fn``, ...) except
            ``sampler``, ``batch_sampler``, ``shuffle`` and ``generator``, which this class sets.

    ``state_dict()`` is ``{"epoch", "batches", "batches_in_epoch", "batch_size", "dataset_length",
    "world_size"}``: the epoch, the batches already yielded in it, and what the position depends on.
    ``load_state_dict`` follows the module's resume rule: a mid-epoch state saved under another
    batch size, training-set length or world size is a :class:`ResumePositionError`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 **kwargs: Any) -> None:
        owned = {"sampler", "batch_sampler", "shuffle", "generator"} & set(kwargs)
        if owned:
            raise ValueError(f"ResumableDataLoader sets {sorted(owned)} itself; do not pass them")
        check_int("batch_size", batch_size, minimum=1)
        seeded = PerSampleSeeds(dataset, seed)
        super().__init__(seeded, batch_size=batch_size, sampler=ResumableSampler(seeded, seed, shuffle),
                         **kwargs)
        self._batches_yielded = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler
        self.dataset.epoch = sampler.epoch
        self.generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.dataset.seed % _SEED_MODULUS, sampler.epoch]).generate_state(1)[0]))
        self._batches_yielded = sampler.skip // self.batch_size
        for batch in super().__iter__():
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._batches_yielded),
                "batches_in_epoch": len(self), **self._settings()}

    def _settings(self) -> dict[str, int]:
        """What the position in an epoch depends on besides the seed."""
        return {"batch_size": int(self.batch_size), "dataset_length": len(self.dataset),
                "world_size": int(self.sampler.num_replicas)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after ``state_dict["batches"]`` batches of epoch ``state_dict["epoch"]``, or at the
        start of the next epoch if that one was complete; :class:`ResumePositionError` for a mid-epoch
        state saved under other settings (the module's resume rule)."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        batches_in_epoch = int(state_dict.get("batches_in_epoch", len(self)))
        sampler: ResumableSampler = self.sampler
        if batches >= batches_in_epoch:  # the epoch was complete: the next one starts from its beginning
            sampler.set_epoch(epoch + 1)
            sampler.skip = 0
            self._batches_yielded = 0
            return
        if batches > 0:
            self._check_mid_epoch_settings(state_dict, epoch, batches, batches_in_epoch)
        sampler.set_epoch(epoch)
        sampler.skip = batches * self.batch_size
        self._batches_yielded = batches

    def _check_mid_epoch_settings(self, state_dict: dict[str, int], epoch: int, batches: int,
                                  batches_in_epoch: int) -> None:
        names = {"batch_size": "the batch size", "dataset_length": "the training set's length",
                 "world_size": "the world size (processes)"}
        settings = self._settings()
        if not set(names) <= set(state_dict):
            warnings.warn(f"the training loader's state (epoch {epoch}, {batches} batches) does not record "
                          f"the batch size, training-set length and world size it was saved under; resuming "
                          f"in the middle of the epoch assumes they are {settings}", RuntimeWarning, stacklevel=3)
            return
        changes = [f"{text} changed from {int(state_dict[key])} to {settings[key]}"
                   for key, text in names.items() if int(state_dict[key]) != settings[key]]
        if not changes and batches_in_epoch != len(self):
            changes = [f"the batches per epoch changed from {batches_in_epoch} to {len(self)}"]
        if changes:
            saved = ", ".join(f"{key} {int(state_dict[key])}" for key in names)
            raise ResumePositionError(
                f"cannot resume the training data in the middle of epoch {epoch} (after {batches} of its "
                f"{batches_in_epoch} batches): {'; '.join(changes)}, so that position cannot be reproduced "
                f"without skipping or repeating samples. Resume with the checkpoint's settings ({saved}), "
                f"or from a checkpoint written at the end of an epoch")
