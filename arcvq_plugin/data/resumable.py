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
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["PerSampleSeeds", "ResumableDataLoader", "ResumableSampler"]

_SEED_MODULUS = 2**32


def _world() -> tuple[int, int]:
    """(world size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


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

    ``state_dict()`` is ``{"epoch", "batches"}``: the epoch and the batches already yielded in it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 **kwargs: Any) -> None:
        owned = {"sampler", "batch_sampler", "shuffle", "generator"} & set(kwargs)
        if owned:
            raise ValueError(f"ResumableDataLoader sets {sorted(owned)} itself; do not pass them")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
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
        return {"epoch": int(self.sampler.epoch), "batches": int(self._batches_yielded)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after ``state_dict["batches"]`` batches of epoch ``state_dict["epoch"]``."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        sampler: ResumableSampler = self.sampler
        if batches >= len(self):  # the epoch was complete: the next one starts from its beginning
            sampler.set_epoch(epoch + 1)
            sampler.skip = 0
        else:
            sampler.set_epoch(epoch)
            sampler.skip = batches * self.batch_size
        self._batches_yielded = batches if batches < len(self) else 0
