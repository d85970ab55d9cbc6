"""Whole datasets as one uint8 tensor on the training device, served in batches by indexing.

For small image datasets (MNIST, CIFAR-10) the DataLoader path (one ``__getitem__`` per image,
collation, a host-to-device copy per batch, worker processes) costs more than the data itself:
60,000 MNIST digits are 47 MB as uint8. :class:`DeviceDataModule` puts each split's ``pixels``
(N, H, W, C) uint8 on the device the Trainer trains on, once, and :class:`DeviceBatches` yields

    {"image": (B, H, W, C) uint8, "class_label": (B,) int64 (when the dataset has labels)}

by indexing that tensor: no workers, no copies, no host syncs. The model converts to float
(``arcvq_plugin.data.image_folder.uint8_to_signed_unit``, exactly the per-item conversion) on
the device. The training order is the permutation ``torch.randperm(N, generator seeded with
seed + epoch)``, the same order as ``data.resumable.ResumableSampler``'s (torch's ``DistributedSampler``), so switching a
config between the two modules keeps every run's data order. Under DDP each rank takes every
world_size-th index of that permutation, padded to equal length as ``DistributedSampler`` does.

Config (taming's target/params; the datasets must expose uint8 ``pixels``, as
``arcvq_plugin.data.mnist.MNIST`` / ``cifar10.CIFAR10`` / ``image_folder.UInt8ImageArray`` do)::

    data:
      target: arcvq_plugin.data.device_batches.DeviceDataModule
      params:
        batch_size: 1024
        train: {target: arcvq_plugin.data.mnist.MNIST, params: {split: train}}
        test: {target: arcvq_plugin.data.mnist.MNIST, params: {split: test}}
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Mapping, Optional

import pytorch_lightning as pl
import torch

from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.validation import check_int, check_optional_int

__all__ = ["DeviceBatches", "DeviceDataModule", "EpochPermutation"]


class EpochPermutation:
    """The training order of one epoch: ``torch.randperm(n)`` from a CPU generator seeded ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before every epoch (it looks for ``loader.sampler.set_epoch``).
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """(n,) int64 on the CPU."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator)


class DeviceBatches:
    """Batches ``{"image": pixels[idx], ...}`` of a uint8 tensor that already sits on its device.

    Args:
        pixels: (N, H, W, C) uint8, on any device.
        batch_size: images per batch (>= 1); the last batch may be smaller (as a DataLoader's).
        labels: optional (N,) int64 on the same device, served as ``"class_label"``.
        shuffle_seed: None serves the images in order; an int shuffles each epoch with
            :class:`EpochPermutation` (``sampler.set_epoch`` picks the epoch).
        rank, world_size: the shard of this process (DDP); 0 and 1 for one device.
    """

    def __init__(self, pixels: torch.Tensor, batch_size: int, labels: Optional[torch.Tensor] = None,
                 shuffle_seed: Optional[int] = None, rank: int = 0, world_size: int = 1):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"pixels must be a uint8 tensor (N, H, W, C), got {pixels.dtype} {tuple(pixels.shape)}")
        check_int("batch_size", batch_size, minimum=1)
        check_int("world_size", world_size, minimum=1)
        check_int("rank", rank, minimum=0, maximum=world_size - 1)
        if labels is not None and labels.shape[0] != pixels.shape[0]:
            raise ValueError(f"labels must have one entry per image ({pixels.shape[0]}), got {labels.shape[0]}")
        self.pixels, self.labels = pixels, labels
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.sampler = None if shuffle_seed is None else EpochPermutation(pixels.shape[0], shuffle_seed)

    @property
    def n_items(self) -> int:
        """Images this rank serves per epoch (padded to equal shards under DDP)."""
        return math.ceil(self.pixels.shape[0] / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.n_items / self.batch_size)

    def _order(self) -> Optional[torch.Tensor]:
        n = self.pixels.shape[0]
        if self.sampler is None and self.world_size == 1:
            return None
        order = self.sampler.indices() if self.sampler is not None else torch.arange(n)
        if self.world_size > 1:
            padded = torch.cat([order, order[: self.n_items * self.world_size - n]])
            order = padded[self.rank::self.world_size]
        return order.to(self.pixels.device)

    def __iter__(self) -> Iterator[dict]:
        order = self._order()
        for start in range(0, self.n_items, self.batch_size):
            if order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = order[start:start + self.batch_size]
            batch = {"image": self.pixels[index]}
            if self.labels is not None:
                batch["class_label"] = self.labels[index]
            yield batch


class DeviceDataModule(pl.LightningDataModule):
    """Train / validation / test splits as uint8 tensors on the Trainer's device (see the module doc).

    Args:
        batch_size: images per batch (>= 1) for every split.
        train, validation, test: dataset configs (``target``/``params``) of datasets with uint8
            ``pixels`` (N, H, W, C) and optional ``labels``; a split that is None has no loader.
        shuffle_seed: seed of the training order; None takes ``PL_GLOBAL_SEED`` (set by
            ``pytorch_lightning.seed_everything`` and the trainer CLI's ``--seed``) or 0.
        eval_batch_size: batch size of the validation and test loaders (default: ``batch_size``).

    Without a Trainer (e.g. ``arcvq-eval model``) the tensors stay on the CPU.
    """

    def __init__(self, batch_size: int, train: Optional[Mapping] = None, validation: Optional[Mapping] = None,
                 test: Optional[Mapping] = None, shuffle_seed: Optional[int] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        eval_batch_size = check_optional_int("eval_batch_size", eval_batch_size, minimum=1)
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else self.batch_size
        self.shuffle_seed = shuffle_seed
        self.dataset_configs = {split: config for split, config in
                                (("train", train), ("validation", validation), ("test", test)) if config is not None}
        self.datasets: dict = {}
        self._on_device: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        for split, method in (("train", "train_dataloader"), ("validation", "val_dataloader"), ("test", "test_dataloader")):
            if split in self.dataset_configs:
                setattr(self, method, lambda split=split: self.loader(split))

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the datasets ``stage`` needs (fit: train; validate: validation; test: test; None: all)."""
        needed = {"fit": ("train",), "validate": ("validation",), "test": ("test",), "predict": ()}.get(
            stage, tuple(self.dataset_configs))
        for split in needed:
            self._dataset(split)

    def _dataset(self, split: str):
        if split not in self.dataset_configs:
            raise ValueError(f"no {split!r} split configured (have {sorted(self.dataset_configs)})")
        if split not in self.datasets:
            dataset = instantiate_from_config(self.dataset_configs[split])
            if not isinstance(getattr(dataset, "pixels", None), torch.Tensor) or dataset.pixels.dtype != torch.uint8:
                raise ValueError(f"data.params.{split}: {type(dataset).__name__} has no uint8 tensor 'pixels' "
                                 "(N, H, W, C); DeviceDataModule serves in-memory uint8 datasets such as "
                                 "arcvq_plugin.data.mnist.MNIST (use data.module.DataModuleFromConfig for others)")
            self.datasets[split] = dataset
        return self.datasets[split]

    def device(self) -> torch.device:
        """The Trainer's root device, or the CPU without a Trainer."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def tensors(self, split: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(pixels (N, H, W, C) uint8, labels (N,) or None)`` of ``split`` on :meth:`device` (moved once)."""
        device = self.device()
        cached = self._on_device.get(split)
        if cached is None or cached[0].device != device:
            dataset = self._dataset(split)
            labels = getattr(dataset, "labels", None)
            cached = (dataset.pixels.to(device), None if labels is None else labels.to(device))
            self._on_device[split] = cached
        return cached

    def loader(self, split: str) -> DeviceBatches:
        """The batches of ``split``: shuffled per epoch for ``train``, in order otherwise."""
        pixels, labels = self.tensors(split)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if split == "train":
            seed = self.shuffle_seed if self.shuffle_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            return DeviceBatches(pixels, self.batch_size, labels, shuffle_seed=seed, rank=rank, world_size=world)
        return DeviceBatches(pixels, self.eval_batch_size, labels, rank=rank, world_size=world)
